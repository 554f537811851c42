"""Malformed input on every service's request path (v1 and legacy): nothing a client sends crashes a service.

Hypothesis draws the cases (``tests/fuzzing.py``: random bytes, random field
values, corrupted JPEGs and PNGs, extreme dimensions and limits, oversized
metadata), derandomized so that every run sends the same ones. Each answer is
either a consistent reply or a precise error (never UNKNOWN or INTERNAL), and
after each batch the service still finds the astronaut's face or the persons in
a street frame, and its process is alive. ``bench/fuzz_bench.py`` runs the
same harness with 10,000+ cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from protos import detection_pb2 as legacy
from services.launcher import LocalStack
from tests.fuzzing import ENDPOINTS, KINDS, Case, Corpus, Endpoint, Fields, Harness, cases, serialize

# Cases per endpoint and kind: 6 endpoints x 56 = 336 in all. Most are refused before any decoding;
# "image" and "dims" cases are the ones that may reach the detectors, so they are kept fewer.
EXAMPLES = {"bytes": 16, "fields": 14, "image": 10, "dims": 6, "limits": 10}


@pytest.fixture(scope="module")
def corpus(data_dir: Path) -> Corpus:
    return Corpus.load(data_dir)


@pytest.fixture(scope="module")
def harness(stack: LocalStack, corpus: Corpus) -> Iterator[Harness]:
    fuzz = Harness({s.name: s.target for s in stack.services}, corpus,
                   {s.name: s.process for s in stack.services})
    yield fuzz
    fuzz.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_fuzz(harness: Harness, corpus: Corpus, endpoint: Endpoint, kind: str) -> None:
    before = harness.good_frame(endpoint)
    assert before.ok, f"good frame refused before fuzzing: {before.detail}"

    @settings(max_examples=EXAMPLES[kind], derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases(endpoint, corpus, kind))
    def one(case: Case) -> None:
        outcome = harness.run(endpoint, case)
        assert not outcome.problems, f"{endpoint}: {case!r} -> {outcome.code}: {outcome.problems}"

    one()
    after = harness.good_frame(endpoint)
    assert after.ok, f"{endpoint} after {kind} cases: {after.detail}"


def test_legacy_aggregator_checks_a_request_that_wants_no_engine(harness: Harness, corpus: Corpus) -> None:
    """Found by the fuzzer: with wantface = wantyolo = 0 the request was answered OK unchecked.

    max_results and a frame that is there are checked as on every other path; an empty frame stays a valid
    "who serves me" query (the reply's ipv4 and name).
    """
    endpoint = next(e for e in ENDPOINTS if e.aggregator and e.api == "legacy")
    refused = [Fields(max_results=-1, want=(0, 0)), Fields(max_results=101, want=(0, 0)),
               Fields(jpeg=corpus.pngs[0], want=(0, 0)), Fields(jpeg=corpus.jpegs[0][:-40], want=(0, 0))]
    for fields in refused:
        answer = harness.send(endpoint, serialize(endpoint, fields))
        assert isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
    for fields in (Fields(want=(0, 0), number=5), Fields(jpeg=corpus.jpegs[0], want=(0, 0), number=5)):
        reply = legacy.ObjectDetectionResponse.FromString(harness.send(endpoint, serialize(endpoint, fields)))
        assert reply.number == 5 and not reply.objects and reply.name
