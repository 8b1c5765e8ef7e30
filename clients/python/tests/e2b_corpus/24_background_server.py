# A server in the background, reached from the host through get_host.
import time, urllib.request
from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    sbx.files.write("/home/user/index.html", "served from the sandbox")
    sbx.commands.run("python3 -m http.server 8000", background=True, cwd="/home/user")
    host = sbx.get_host(8000)
    for _ in range(100):
        try:
            body = urllib.request.urlopen(f"http://{host}/index.html", timeout=2).read().decode()
            break
        except OSError:
            time.sleep(0.1)
    print(body)
# expect:
# served from the sandbox
