"""Fault points: a no-op unless ``LLMOPS_FAULTS`` names the point; then they fail as armed."""

import subprocess
import sys
import time

import pytest

from llmops.faults import FAULTS_ENV, FaultSettingError, InjectedFailure, armed_points, fault_point


def test_a_point_the_setting_does_not_name_does_nothing(monkeypatch):
    monkeypatch.delenv(FAULTS_ENV, raising=False)
    fault_point("finetune.step.7")
    monkeypatch.setenv(FAULTS_ENV, "finetune.step.7")
    fault_point("finetune.step.8")
    fault_point("finetune.step.70")


def test_a_named_point_fails_the_first_attempt_only_unless_all(monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, "finetune.step.7")
    with pytest.raises(InjectedFailure, match=rf"failure injected at finetune\.step\.7 \({FAULTS_ENV}\)"):
        fault_point("finetune.step.7")
    fault_point("finetune.step.7", attempt=1)  # a retry goes through
    monkeypatch.setenv(FAULTS_ENV, "promote.after_register, finetune.step.7:all")
    assert armed_points() == {"promote.after_register": False, "finetune.step.7": True}
    with pytest.raises(InjectedFailure):
        fault_point("finetune.step.7", attempt=2)


def test_a_sleeping_point_delays_instead_of_failing(monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, "shadow.answer:sleep=0.2, finetune.step.3:all")
    began = time.perf_counter()
    fault_point("shadow.answer")  # no error: a slow dependency, not a broken one
    assert time.perf_counter() - began >= 0.2
    assert armed_points() == {"shadow.answer": False, "finetune.step.3": True}


BAD = ["soon", "finetune.step.7:twice", "finetune..step", "shadow.answer:sleep=", "shadow.answer:sleep=x"]


@pytest.mark.parametrize("value", BAD)
def test_a_bad_setting_is_an_error_naming_it(monkeypatch, value):
    monkeypatch.setenv(FAULTS_ENV, value)
    with pytest.raises(FaultSettingError, match=rf"^{FAULTS_ENV}: '{value}'") as raised:
        fault_point("finetune.step.7")
    assert isinstance(raised.value, ValueError)


def test_kill_ends_the_process_at_once_as_a_lost_machine_would(monkeypatch):
    code = (
        "from llmops.faults import fault_point\ntry:\n    fault_point('promote.after_register', kill=True)\n"
    )
    code += "finally:\n    print('cleaned up')\n"
    monkeypatch.setenv(FAULTS_ENV, "promote.after_register")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9 and "cleaned up" not in killed.stdout
