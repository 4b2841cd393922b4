"""A durable inference log survives ``kill -9`` of the worker: every answered request is in the log.

The classifier runs for real (``bentoml serve`` on a free port) with ``LLMOPS_LOG_DURABLE=true``
and a background flush interval of a minute, so a row the background writer held would be lost:
only rows written before their answer left can be found after the kill.
"""

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from llmops.inference_log import read_log
from llmops.server_process import bento_server, stop
from llmops.tabular.data import load_table
from tests.classifier_release import fit_classifier, register_passing_classifier
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REQUESTS, CLIENTS = 200, 4
KILL_AFTER = REQUESTS // 2  # answers before the worker is killed, with the other clients in flight


def test_a_killed_worker_loses_no_answered_row_and_an_unwritable_log_answers_500(tmp_path, model_name):
    model, schema = fit_classifier()
    register_passing_classifier(model_name, model, schema)
    table = load_table()[list(schema.features)]
    bodies = [{"records": [table.iloc[i % len(table)].to_dict()]} for i in range(REQUESTS)]
    log_dir = tmp_path / "log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_API")} | {
        "LLMOPS_CLASSIFIER_RELEASE": model_name,
        "LLMOPS_INFERENCE_LOG_DIR": str(log_dir),
        "LLMOPS_LOG_DURABLE": "true",
        "LLMOPS_INFERENCE_LOG_FLUSH_S": "60",  # the background writer would still hold every row
    }
    answered: list[str] = []
    lock, killed = threading.Lock(), threading.Event()
    with (
        bento_server(
            "services.classifier:Classifier", env=env, log=tmp_path / "server.log", cwd=REPO
        ) as server,
        httpx.Client(base_url=server.url, timeout=5) as client,
    ):
        # a row that cannot be written is not answered 200: here the model's folder is a file
        log_dir.mkdir(exist_ok=True)
        (log_dir / model_name).write_text("not a folder")
        refused = client.post("/predict", json=bodies[0])
        assert refused.status_code == 500, refused.text
        (log_dir / model_name).unlink()

        def kill_the_worker() -> None:
            # the log file names the process that wrote it: the worker under the serve process
            (pid,) = {int(file.stem.split("-")[1]) for file in log_dir.glob(f"{model_name}/*/*.jsonl")}
            (worker,) = [p for p in server.workers if p.pid == pid]
            os.kill(pid, signal.SIGKILL)
            worker.wait(10)

        def send(body: dict) -> None:
            if killed.is_set():
                return  # the worker is gone: what matters is what it answered before
            try:
                response = client.post("/predict", json=body)
            except httpx.HTTPError:
                return
            if response.status_code != 200:
                return
            with lock:
                answered.append(response.json()[0]["request_id"])
                if len(answered) == KILL_AFTER:
                    killed.set()
                    kill_the_worker()

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(send, bodies))
        assert killed.is_set(), f"only {len(answered)} requests answered; {server.log} tells why"
        # BentoML starts a new worker; ending it mid-start takes the default grace of 20 s
        stop(server.process, grace_s=3, known=server.workers)

    logged = set(read_log(log_dir, model_name)["request_id"])
    missing = [request_id for request_id in answered if request_id not in logged]
    assert len(answered) >= KILL_AFTER
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not in the log"
