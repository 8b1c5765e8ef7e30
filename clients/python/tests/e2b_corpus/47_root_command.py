# Commands as root: system directories, file owners (E2B's user="root").
from e2b_code_interpreter import Sandbox

with Sandbox.create() as sbx:
    print(sbx.commands.run("whoami", user="root").stdout.strip())
    sbx.commands.run("mkdir -p /opt/tool && echo ready > /opt/tool/state && chown -R user /opt/tool", user="root")
    print(sbx.commands.run("cat /opt/tool/state; whoami").stdout, end="")
# expect:
# root
# ready
# user
