import time
from e2b_code_interpreter import Sandbox
from e2b import FilesystemEventType

with Sandbox.create() as sbx:
    handle = sbx.files.watch_dir("/home/user")
    sbx.files.write("/home/user/watched.txt", "x")
    events = []
    for _ in range(50):
        events += handle.get_new_events()
        if any(e.name == "watched.txt" for e in events):
            break
        time.sleep(0.1)
    handle.stop()
print(any(e.name == "watched.txt" and e.type in (FilesystemEventType.CREATE, FilesystemEventType.WRITE) for e in events))
# expect:
# True
