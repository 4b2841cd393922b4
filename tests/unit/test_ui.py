"""``llmops ui`` without a browser: its routes through Starlette's test client over a registry filled
here (the session's private BentoML home), its auth, its 404s and its offline assets. The browser
tests over real flow runs and a real RAG service are in tests/integration/test_rag.py."""

from __future__ import annotations

import html
import json
import logging
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from llmops.registry import Registry
from llmops.ui.app import HERE, create_app
from llmops.ui.auth import Auth
from llmops.ui.charts import measures_chart
from llmops.ui.config import UiConfig, parse_services

KEY = "ui-key-" + uuid.uuid4().hex


def register(name: str, count: int) -> list[str]:
    registry, made = Registry(), []
    for i in range(count):
        decision = {
            "model": name,
            "passed": True,
            "policy_version": "policy-test",
            "champion_version": None,
            "rules": [{"rule": "metrics.f1.min", "value": 0.93, "limit": 0.9, "passed": True}],
        }
        version = registry.register(
            name,
            lambda folder: (folder / "m.txt").write_text("x"),
            metadata={
                "run": f"TrainClassifierFlow/{i + 1}",
                "dataset_version": f"ds-{i}",
                "gate_passed": True,
                "metrics": {"f1": 0.93},
                "policy_version": "policy-test",
            },
            json_files={"gate_decision.json": decision},
        )
        made.append(version.version)
    registry.promote(name, made[0])
    return made


@pytest.fixture(scope="module")
def model() -> tuple[str, list[str]]:
    name = "ui-" + uuid.uuid4().hex[:8]
    return name, register(name, 2)


def client(key: str | None = None, **config) -> TestClient:
    auth = Auth(SecretStr(key) if key else None)
    return TestClient(create_app(UiConfig(auth=auth, **config)), follow_redirects=False)


def test_models_page_lists_versions_aliases_gate_and_lineage(model):
    name, (first, second) = model
    with client() as ui:
        page = ui.get("/models").text
        one = ui.get(f"/models/{name}").text
        detail = ui.get(f"/models/{name}/{first}").text
    assert name in page and first in page and second in page and "read-only" in page
    assert '<span class="alias champion">champion</span>' in one
    assert "ds-0" in one and "/runs/TrainClassifierFlow/1" in one
    assert "metrics.f1.min" in detail and "policy-test" in detail  # its recorded gate decision
    assert "make champion" not in one and "make challenger" not in one  # read-only: no buttons


def test_read_only_without_a_key(model):
    name, (_, second) = model
    with client() as ui:
        refused = ui.post(f"/models/{name}/promote", data={"version": second, "alias": "champion"})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
        assert ui.post("/login", data={"key": "anything"}).status_code == 403
    assert Registry().aliases(name)["champion"] == model[1][0]


def test_promote_and_rollback_need_the_key_and_check_the_alias_they_saw(model):
    name, (first, second) = model
    bearer = {"Authorization": f"Bearer {KEY}"}
    with client(KEY) as ui:
        form = {"version": second, "alias": "champion", "expected": first}
        assert ui.post(f"/models/{name}/promote", data=form).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert ui.post(f"/models/{name}/promote", data=form, headers=wrong).status_code == 401
        elsewhere = {**bearer, "Origin": "http://evil.example"}
        assert ui.post(f"/models/{name}/promote", data=form, headers=elsewhere).status_code == 403
        assert Registry().aliases(name)["champion"] == first
        stale = {**form, "expected": "not-what-it-is"}
        conflict = ui.post(f"/models/{name}/promote", data=stale, headers={**bearer, "HX-Request": "true"})
        assert conflict.status_code == 409 and "moved to" in conflict.text
        moved = ui.post(f"/models/{name}/promote", data=form, headers={**bearer, "HX-Request": "true"})
        assert moved.status_code == 200 and moved.headers["HX-Refresh"] == "true"
        assert Registry().aliases(name)["champion"] == second
        # a browser logs in once: the cookie holds an HMAC of the key, not the key
        login = ui.post("/login?next=/models/" + name, data={"key": KEY})
        assert login.status_code == 303 and KEY not in login.headers["set-cookie"]
        assert "make challenger" in ui.get(f"/models/{name}").text
        back = ui.post(f"/models/{name}/rollback", data={"alias": "champion"}, headers={"HX-Request": "true"})
        assert back.status_code == 200, back.text
    assert Registry().aliases(name)["champion"] == first


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/models/no-such-model", "model 'no-such-model' is not registered"),
        ("/models/{name}/v0000000000", "v0000000000 not found"),
        ("/gates/no-such-model", "no-such-model"),
        ("/monitoring/no-such-model", "no-such-model"),
        ("/runs/NoSuchFlow/123", "run 'NoSuchFlow/123' not found"),
        ("/cards/NoSuchFlow/1/start/2", "task 'NoSuchFlow/1/start/2' not found"),
        ("/golden?golden=nope.yaml", "golden set 'nope.yaml'"),
        ("/nowhere", "no page at /nowhere"),
    ],
)
def test_unknown_things_are_a_404_page_naming_them(model, path, named, tmp_path):
    golden = tmp_path / "rag_golden.yaml"
    golden.write_text("questions: []\n")
    with client(golden=[golden]) as ui:
        reply = ui.get(path.format(name=model[0]))
    text = html.unescape(reply.text)
    assert reply.status_code == 404 and named in text and "Traceback" not in text


def test_assets_are_served_from_the_package_and_no_page_names_another_host():
    with client() as ui:
        for asset in ("htmx.min.js", "vega.min.js", "vega-lite.min.js", "ui.js", "ui.css"):
            assert ui.get(f"/static/{asset}").status_code == 200, asset
    for template in (HERE / "templates").glob("*.html"):
        text = template.read_text()
        assert 'src="http' not in text and 'href="http' not in text, template.name


def test_golden_candidates_are_accepted_or_rejected_with_the_key(tmp_path, monkeypatch):
    from llmops.inference_log import InferenceLogger
    from llmops.rag.evaluation import load_golden

    golden = tmp_path / "g_golden.yaml"
    golden.write_text(
        "questions:\n  - question: What is a gate?\n    reference: A check.\n"
        "    reference_contexts: [A gate is a check.]\n"
    )
    log = tmp_path / "log"
    monkeypatch.setenv("LLMOPS_INFERENCE_LOG_DIR", str(log))
    rows = [
        {
            "kind": "rag_request",
            "request_id": "r1",
            "model": "rag-ui",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "question": "How do I roll back?",
            "sources": [{"source": "registry.md", "chunk": 0, "score": 0.5}],
            "answer": "No idea.",
            "status": 200,
        },
        {
            "kind": "feedback",
            "request_id": "r1",
            "model": "rag-ui",
            "timestamp": "2026-01-01T00:01:00+00:00",
            "rating": -1,
            "correction": "llmops models rollback NAME.",
        },
    ]
    writer = InferenceLogger(log, "rag-ui", flush_interval=0.05)
    writer.log(rows)
    writer.close()
    with client(KEY, golden=[golden]) as ui:
        page = ui.get("/golden?release=rag-ui").text
        assert "How do I roll back?" in page and "llmops models rollback NAME." in page
        candidate = page.split('<tr id="')[1].split('"')[0]
        form = {"golden": golden.name, "release": "rag-ui", "id": candidate, "decision": "accept"}
        assert ui.post("/golden/decide", data=form).status_code == 401
        done = ui.post("/golden/decide", data=form, headers={"Authorization": f"Bearer {KEY}"})
        assert done.status_code == 303, done.text
        page = ui.get("/golden?release=rag-ui").text
    assert [q.question for q in load_golden(golden).questions][-1] == "How do I roll back?"
    page = html.unescape(page)
    assert "accepted" in page and '+  - question: "How do I roll back?"' in page, page  # the diff


def test_playground_asks_only_the_services_it_was_given():
    with client(services=parse_services(["champion=http://127.0.0.1:9"])) as ui:
        page = ui.get("/playground").text
        assert "champion (http://127.0.0.1:9)" in page
        unknown = ui.post("/playground/ask", json={"service": "other", "question": "hi"})
        assert unknown.status_code == 404 and "'other'" in unknown.json()["error"]
        down = ui.post("/playground/ask", json={"service": "champion", "question": "hi"})
        events = [json.loads(line) for line in down.text.splitlines()]
        assert events[0]["type"] == "error" and "does not answer" in events[0]["error"]
        bad = ui.post("/playground/feedback", json={"service": "champion", "request_id": "x", "rating": 5})
        assert bad.status_code == 400 and "rating" in bad.json()["error"]
    with pytest.raises(ValueError, match="NAME=http"):
        parse_services(["champion:3000"])


def test_the_command_binds_loopback_and_warns_for_another_host(caplog):
    from llmops.cli import build_parser
    from llmops.ui.command import warn_if_reachable

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port) == ("127.0.0.1", 8080)
    with caplog.at_level(logging.WARNING, logger="llmops.ui"):
        warn_if_reachable("127.0.0.1", key_set=False)
        assert not caplog.records
        warn_if_reachable("0.0.0.0", key_set=False)
    assert "without LLMOPS_API_KEY" in caplog.text and "--host 127.0.0.1" in caplog.text


def test_the_measures_chart_has_a_row_per_measure_and_a_point_per_run():
    points = [
        {
            "run": f"F/{i}",
            "at": f"2026-01-0{i}T00:00:00",
            "measure": m,
            "value": 0.1 * i,
            "limit": 0.3,
            "status": "failed" if i == 3 else "passed",
        }
        for i in (1, 2, 3)
        for m in ("drift", "latency")
    ]
    spec = measures_chart(points)
    assert spec["facet"]["row"]["field"] == "measure" and spec["resolve"]["scale"]["y"] == "independent"
    assert spec["data"]["values"] == points and Path(HERE / "static" / "vega-lite.min.js").is_file()


def fake_llm_service():
    """An OpenAI-style service as services/llm.py answers: /info, a streamed chat completion, /feedback."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def info(request):
        return JSONResponse(
            {"model": "tiny", "release": "llm:v7", "backend": "transformers", "max_tokens": 16}
        )

    async def chat(request):
        body = await request.json()
        assert body["stream"] is True and body["messages"][-1]["content"] == "Say hi"

        async def chunks():
            for text in ("Hel", "lo", "!"):
                chunk = {"id": "chatcmpl-abc", "choices": [{"index": 0, "delta": {"content": text}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def feedback(request):
        body = await request.json()
        return JSONResponse(
            {"request_id": body["request_id"], "model_version": "v7", "rating": body["rating"]}
        )

    routes = [Route("/info", info, methods=["POST"]), Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/feedback", feedback, methods=["POST"])]  # fmt: skip
    return Starlette(routes=routes)


def test_an_llm_services_answer_streams_token_by_token_and_is_rated():
    import httpx

    with client(services=parse_services(["llm=http://llm.test"])) as ui:
        ui.app.state.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake_llm_service()))
        reply = ui.post("/playground/ask", json={"service": "llm", "question": "Say hi"})
        events = [json.loads(line) for line in reply.text.splitlines()]
        rated = ui.post(
            "/playground/feedback", json={"service": "llm", "request_id": "chatcmpl-abc", "rating": -1}
        )
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    assert events[0] == {"type": "meta", "service": "llm", "kind": "llm", "release": "llm:v7"}
    assert [e["text"] for e in events if e["type"] == "token"] == ["Hel", "lo", "!"]
    assert events[-1] == {"type": "done", "request_id": "chatcmpl-abc"}
    assert rated.status_code == 200 and rated.json()["rating"] == -1


def test_bad_parameters_are_a_400_naming_the_field(model, tmp_path):
    name = model[0]
    golden = tmp_path / "rag_golden.yaml"
    golden.write_text("questions: []\n")
    with client(KEY, golden=[golden]) as ui:
        status = ui.get(f"/gates/{name}?status=maybe")
        page = ui.get(f"/models/{name}?page=two")
        bearer = {"Authorization": f"Bearer {KEY}"}
        form = {"golden": golden.name, "release": "rag", "id": "c1", "decision": "maybe"}
        decision = ui.post("/golden/decide", data=form, headers=bearer)
        no_version = ui.post(f"/models/{name}/promote", data={"alias": "champion"}, headers=bearer)
        for elsewhere in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
            login = ui.post("/login", params={"next": elsewhere}, data={"key": KEY})
            assert login.headers["location"] == "/models", elsewhere  # never off this UI
    assert status.status_code == 400 and "status: 'maybe' is not passed or failed" in html.unescape(
        status.text
    )
    assert page.status_code == 400 and "page: 'two' is not a number" in html.unescape(page.text)
    assert decision.status_code == 400 and "decision: 'maybe'" in decision.json()["error"]
    assert no_version.status_code == 400 and "version: required" in html.unescape(no_version.text)
    assert Registry().aliases(name)["champion"] == model[1][0]


def test_the_command_names_a_bad_port_service_or_golden_set(monkeypatch, tmp_path):
    from llmops.errors import ParameterError
    from llmops.ui.command import build_config, serve

    with pytest.raises(ParameterError, match="--port: 70000 is not a port number"):
        serve("127.0.0.1", 70000, [], None)
    with pytest.raises(ParameterError, match=r"--golden: no such file: .*missing\.yaml"):
        build_config([], [str(tmp_path / "missing.yaml")])
    monkeypatch.setenv("LLMOPS_UI_SERVICES", "champion=http://127.0.0.1:3000,broken")
    with pytest.raises(ParameterError, match="LLMOPS_UI_SERVICES: 'broken' is not NAME=http"):
        build_config([], [])
    monkeypatch.setenv("LLMOPS_UI_SERVICES", "champion=http://127.0.0.1:3000")
    with pytest.raises(ParameterError, match="--service: champion given twice"):
        build_config(["champion=http://127.0.0.1:3001"], [])
    config = build_config(["challenger=http://127.0.0.1:3001/"], [])
    assert [(s.name, s.url) for s in config.services] == [
        ("champion", "http://127.0.0.1:3000"),
        ("challenger", "http://127.0.0.1:3001"),
    ]
