"""The REST models: unknown fields kept, unknown statuses tolerated, no Nones sent."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infernet_async import ChatRequest, Job, JobRequest, Message, ModelInfo
from infernet_async.models import JOB_ADAPTER, JOB_LIST_ADAPTER, MODEL_LIST_ADAPTER

COMPLETED = {
    "id": "job_9a3f2c1d",
    "status": "completed",
    "model": "qwen2.5:14b",
    "created_at": "2026-01-02T03:04:05.678Z",
    "node_id": "node_1",
    "result": {
        "content": "Paris.",
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    },
    "completed_at": "2026-01-02T03:04:07Z",
    "latency_ms": 1234,
}


def test_completed_job_parses_every_documented_field() -> None:
    job = JOB_ADAPTER.validate_python(COMPLETED)
    assert job.status == "completed" and job.is_terminal
    assert job.content == "Paris."
    assert job.result is not None and job.result.usage is not None
    assert job.result.usage.total_tokens == 13
    assert job.created_at is not None and job.created_at.tzinfo is not None
    assert job.latency_ms == 1234


def test_unknown_fields_are_kept_not_rejected() -> None:
    job = Job.model_validate({**COMPLETED, "region": "eu", "result": {"content": "x", "cost": 3}})
    assert job.model_extra == {"region": "eu"}
    assert job.result is not None and job.result.model_extra == {"cost": 3}
    info = ModelInfo.model_validate({"id": "m", "nodes": 2, "context_window": 32768})
    assert info.model_extra == {"context_window": 32768}


def test_unknown_status_is_kept_as_a_string() -> None:
    job = Job.model_validate({"id": "job_1", "status": "cancelling"})
    assert job.status == "cancelling"
    assert not job.is_terminal
    assert job.content is None


def test_live_plane_model_name_fills_model() -> None:
    job = Job.model_validate({"id": "job_1", "status": "pending", "model_name": "qwen2.5:14b"})
    assert job.model == "qwen2.5:14b"


def test_failed_job_carries_error_and_message() -> None:
    job = Job.model_validate(
        {"id": "job_1", "status": "failed", "error": "timeout", "error_message": "too slow"}
    )
    assert job.is_terminal and job.error == "timeout" and job.error_message == "too slow"


def test_list_adapters_parse_wrapped_lists() -> None:
    jobs = JOB_LIST_ADAPTER.validate_python({"jobs": [COMPLETED], "next": "cursor"})
    assert [j.id for j in jobs.jobs] == ["job_9a3f2c1d"]
    assert jobs.model_extra == {"next": "cursor"}
    models = MODEL_LIST_ADAPTER.validate_python(
        {"models": [{"id": "qwen2.5:14b", "nodes": 12, "avg_tokens_per_second": 78}]}
    )
    assert models.models[0].avg_tokens_per_second == 78.0


def test_chat_request_leaves_out_unset_fields() -> None:
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    assert request.to_json() == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }
    assert JobRequest is ChatRequest


def test_chat_request_validates_ranges() -> None:
    with pytest.raises(ValidationError):
        ChatRequest(model="m", messages=[], temperature=2.5)
    with pytest.raises(ValidationError):
        ChatRequest(model="m", messages=[], max_tokens=0)
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "user"})


def test_message_keeps_extra_fields_in_the_request() -> None:
    request = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi", "name": "ann"}], "seed": 7}
    )
    assert request.to_json()["messages"][0]["name"] == "ann"
    assert request.to_json()["seed"] == 7
