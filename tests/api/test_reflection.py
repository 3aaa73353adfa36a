"""Server reflection, as generic tools (grpcurl, Evans, Postman, Python's stock client) use it:
the services are listed and the Jobs service's descriptors can be rebuilt from the answers."""

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from factotum.jobs.v2 import jobs_pb2

SERVICES = {"factotum.jobs.v2.Jobs", "factotum.v1.Agents", "grpc.health.v1.Health"}


def ask(call, **request):
    """One ServerReflectionInfo exchange (the stream carries one request here)."""
    answers = list(call(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10))
    assert len(answers) == 1, answers
    answer = answers[0]
    assert not answer.HasField("error_response"), answer.error_response
    return answer


def check_reflection(call):
    listed = {s.name for s in ask(call, list_services="").list_services_response.service}
    assert SERVICES <= listed, f"listed: {sorted(listed)}"

    # The file declaring Jobs, then every file it imports (by name), until the set is closed.
    answer = ask(call, file_containing_symbol="factotum.jobs.v2.Jobs")
    files = {}
    pending = list(answer.file_descriptor_response.file_descriptor_proto)
    assert pending, "no file for factotum.jobs.v2.Jobs"
    first = descriptor_pb2.FileDescriptorProto.FromString(pending[0])
    assert (first.name, first.package) == ("factotum/jobs/v2/jobs.proto", "factotum.jobs.v2")
    while pending:
        fd = descriptor_pb2.FileDescriptorProto.FromString(pending.pop())
        files[fd.name] = fd
        for dep in fd.dependency:
            if dep not in files and not any(
                descriptor_pb2.FileDescriptorProto.FromString(p).name == dep for p in pending
            ):
                got = ask(call, file_by_filename=dep).file_descriptor_response.file_descriptor_proto
                assert got, f"no file {dep}"
                pending.extend(got)
    assert {"google/protobuf/timestamp.proto", "google/protobuf/duration.proto"} <= set(files)

    # A pool built from reflection alone has the service as the stubs know it.
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        for dep in files[name].dependency:
            add(dep)
        pool.Add(files[name])
        added.add(name)

    add("factotum/jobs/v2/jobs.proto")
    service = pool.FindServiceByName("factotum.jobs.v2.Jobs")
    expected = jobs_pb2.DESCRIPTOR.services_by_name["Jobs"]
    assert [m.name for m in service.methods] == [m.name for m in expected.methods]
    watch = service.methods_by_name["WatchRun"]
    assert watch.output_type.full_name == "factotum.jobs.v2.RunEvent"
    assert pool.FindMessageTypeByName("factotum.jobs.v2.Run").fields_by_name["start_time"].message_type.full_name == (
        "google.protobuf.Timestamp"
    )


def test_reflection_v1alpha_lists_the_services_and_resolves_jobs(procs):
    c = procs.coordinator()
    check_reflection(reflection_pb2_grpc.ServerReflectionStub(c.channel).ServerReflectionInfo)


def test_reflection_v1_answers_the_same(procs):
    # grpcio-reflection ships only a v1alpha client; v1's messages are the same on the wire
    # (grpc.reflection.v1 renamed the package only), so the v1alpha classes speak v1 too.
    c = procs.coordinator()
    call = c.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    check_reflection(call)
