"""Refusals are google.rpc.Status values with standard details (the proto's error model),
decoded by grpc_status as any Python client would."""

import grpc

from factfiles import one_task
from factotum.jobs.v2 import jobs_pb2
from support import error_details, refused


def test_a_bad_factfile_is_invalid_argument_with_error_info_and_bad_request(procs):
    c = procs.coordinator()
    err = refused(
        c.jobs.SubmitRun,
        jobs_pb2.SubmitRunRequest(factfile="{", factfile_name="broken.factfile"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    status, info, bad = error_details(err)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert info is not None, f"no ErrorInfo in {status}"
    assert (info.domain, info.reason) == ("factotum", "INVALID_FACTFILE")
    assert bad is not None, f"no BadRequest in {status}"
    assert [v.field for v in bad.field_violations] == ["factfile"]
    assert bad.field_violations[0].description
    assert "--" not in status.message, status.message


def test_a_bad_env_json_names_the_field_not_a_cli_flag(procs):
    c = procs.coordinator()
    err = refused(
        c.jobs.SubmitRun,
        jobs_pb2.SubmitRunRequest(factfile=one_task("env", "echo", "hi"), env_json="[1]"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    status, info, bad = error_details(err)
    assert info is not None, f"no ErrorInfo in {status}"
    assert (info.domain, info.reason) == ("factotum", "INVALID_ARGUMENT")
    assert bad is not None, f"no BadRequest in {status}"
    assert [v.field for v in bad.field_violations] == ["env_json"]
    for text in [status.message, err.details(), *(v.description for v in bad.field_violations)]:
        assert "--env" not in text and "--" not in text, f"a CLI flag in an API message: {text!r}"
