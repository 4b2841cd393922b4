"""A service for tests of how a server starts and stops: it answers with its process ids.

    bentoml serve tests.services.echo:Echo --host 127.0.0.1 --port 3000

It calls ``die_with_supervisor`` at import, as every service of the project does, unless
``ECHO_SUPERVISED=0`` (a worker that outlives its supervisor, for the tests of ``server_process``).
"""

import os

import bentoml
from pydantic import BaseModel

from llmops.supervision import die_with_supervisor

if os.environ.get("ECHO_SUPERVISED", "1") != "0":
    die_with_supervisor(grace_s=2)  # the tests wait 5 s for a worker to end


class Processes(BaseModel):
    pid: int
    ppid: int
    sid: int


@bentoml.service(workers=1)
class Echo:
    @bentoml.api
    def processes(self) -> Processes:
        return Processes(pid=os.getpid(), ppid=os.getppid(), sid=os.getsid(0))
