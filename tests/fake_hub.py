"""A local stand-in for the Hugging Face hub, for testing `python -m tools.weights fetch` and `python -m tools.export
push` without network: the few endpoints huggingface_hub's downloads call (a repository's file tree and revision, and
HEAD / GET of a file) and its uploads call (create a repository, validate a model card's metadata, preupload, commit:
every file as a regular, base64-encoded one), on 127.0.0.1, with repositories held in memory. Point a process at it
with HF_ENDPOINT=hub.url."""
import base64
import hashlib
import http.server
import json
import threading
import urllib.parse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos):
        self.repos = repos  # {"org/name": {"path/in/repo": bytes}}
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.serve_file(body=False)

            def do_GET(self):
                path = urllib.parse.urlparse(self.path).path
                if not path.startswith("/api/models/"):
                    return self.serve_file(body=True)
                parts = path[len("/api/models/"):].split("/")
                files = hub.repos.get("/".join(parts[:2]))
                if files is None or len(parts) < 3:
                    return self.send(404, b"{}")
                if parts[2] == "tree":
                    listing = [{"type": "file", "path": name, "size": len(data),
                                "oid": hashlib.sha1(data).hexdigest()} for name, data in files.items()]
                else:  # revision/REV: the repository's info
                    listing = {"id": "/".join(parts[:2]), "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
                self.send(200, json.dumps(listing).encode())

            def do_POST(self):
                path = urllib.parse.urlparse(self.path).path
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if path == "/api/validate-yaml":  # a model card's metadata, checked before the commit
                    return self.send(200, json.dumps({"errors": [], "warnings": []}).encode())
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request['organization']}/{request['name']}" if request.get("organization") else \
                        request["name"]
                    hub.repos.setdefault(repo, {})
                    return self.send(200, json.dumps({"url": f"{hub.url}/{repo}"}).encode())
                parts = path[len("/api/models/"):].split("/") if path.startswith("/api/models/") else []
                repo = "/".join(parts[:2])
                if len(parts) < 3 or repo not in hub.repos:
                    return self.send(404, b"{}")
                if parts[2] == "preupload":
                    files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                             for f in json.loads(body)["files"]]
                    return self.send(200, json.dumps({"files": files}).encode())
                if parts[2] == "commit":
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self.send(200, json.dumps({"commitUrl": f"{hub.url}/{repo}/commit/{COMMIT}",
                                                      "commitOid": COMMIT}).encode())
                return self.send(404, b"{}")

            def serve_file(self, body):
                parts = urllib.parse.urlparse(self.path).path.strip("/").split("/")
                data = hub.repos.get("/".join(parts[:2]), {}).get("/".join(parts[4:])) \
                    if len(parts) > 4 and parts[2] == "resolve" else None
                if data is None:
                    return self.send(404, b"", {"X-Error-Code": "EntryNotFound"})
                self.send(200, data if body else b"", {"X-Repo-Commit": COMMIT,
                                                       "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, len(data))

            def send(self, code, body, headers=None, length=None):
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
