"""Fault injection: every kind strikes, is counted, and has the effect AWS's failure has.

End to end over real sockets with the ``faults`` app (one local cloud for
the module, started with every rate 0 and raised per test through
``PUT /_local/faults``, at rate 1 for determinism), plus in-process tests of
the spec parser, the control rules and the botocore hooks (throttling and
retries, crashes that ``except Exception`` cannot swallow, overhead).

The cloud runs with ``AWS_MAX_ATTEMPTS=2`` so that botocore's retries of
throttled and failed calls stay short: every such call makes two attempts.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import botocore.endpoint
import pytest
import websockets
from botocore.config import Config
from botocore.exceptions import ClientError
from websockets.exceptions import ConnectionClosedError

from infra.local import faults
from infra.local.cli import build_parser
from infra.local.handlers import InvocationCrashed, LambdaFunction
from tests.local_cloud import APPS_DIR, LocalCloud

FAULTS_APP = APPS_DIR / "faults"
TABLE = "faults-local-items"
ATTEMPTS = 2  # AWS_MAX_ATTEMPTS of the module's cloud
SQS_EVENT = {"Records": [{"eventSource": "aws:sqs"}]}
MESSAGE_EVENT = {"requestContext": {"eventType": "MESSAGE"}}
ONE_PUT = [{"Put": {"TableName": "t", "Item": {"pk": {"S": "a"}}}}]


@pytest.fixture(scope="module")
def cloud():
    with LocalCloud(FAULTS_APP, "--faults", "all=0", "--fault-seed", "7", env={"AWS_MAX_ATTEMPTS": str(ATTEMPTS)}) as running:
        yield running


@pytest.fixture
def rates(cloud):
    """Set fault rates for one test; every rate goes back to 0 afterwards."""
    yield lambda **r: put_faults(cloud, r)
    put_faults(cloud, dict.fromkeys(faults.ALL_KINDS, 0))


def faults_url(cloud: LocalCloud) -> str:
    return f"http://{cloud.host}:{cloud.ws_port}/_local/faults"


def get_faults(cloud: LocalCloud) -> dict[str, Any]:
    with urllib.request.urlopen(faults_url(cloud), timeout=30) as response:
        return json.loads(response.read())


def put_faults(cloud: LocalCloud, rates: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        faults_url(cloud), data=json.dumps({"rates": rates}).encode(), method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def put_error(cloud: LocalCloud, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(faults_url(cloud), data=body, method="PUT")
    try:
        urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    raise AssertionError("the PUT was accepted")


def injected(cloud: LocalCloud, kind: str) -> int:
    return int(get_faults(cloud)["injected"][kind])


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def eventually(check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.1)
    return value


def item(cloud: LocalCloud, pk: str) -> dict[str, Any] | None:
    found = cloud.client("dynamodb").get_item(TableName=TABLE, Key={"pk": {"S": pk}}).get("Item")
    return {k: next(iter(v.values())) for k, v in found.items()} if found else None


def new_id() -> str:
    return uuid.uuid4().hex[:12]


async def frames_within(ws: Any, seconds: float) -> list[Any]:
    """Every frame that arrives within ``seconds``, parsed."""
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return frames


async def frames_until(ws: Any, done: Any, settle: float = 0.5, timeout: float = 60.0) -> list[Any]:
    """Frames until ``done(frames)`` holds (however long the machine takes), then any within ``settle`` more.

    The wait for what must arrive has no tight deadline; only the check that
    nothing more arrives is a time window, which a slow machine can only
    make weaker, never fail.
    """
    frames: list[Any] = []
    async with asyncio.timeout(timeout):
        while not done(frames):
            frames.append(json.loads(await ws.recv()))
    return frames + await frames_within(ws, settle)


async def whoami(ws: Any) -> str:
    await ws.send(json.dumps({"action": "whoami", "id": "-"}))
    return json.loads(await ws.recv())["connection_id"]


def is_internal_error(frame: Any) -> bool:
    return isinstance(frame, dict) and frame.get("message") == "Internal server error" and "requestId" in frame


# --- control ---------------------------------------------------------------------


def test_get_shows_every_kind_and_put_is_a_partial_update(cloud, rates):
    state = get_faults(cloud)
    assert set(state) == {"rates", "injected"}
    assert set(state["rates"]) == set(state["injected"]) == set(faults.ALL_KINDS)
    updated = rates(push_fail=0.25, throttle=1)
    assert updated["rates"]["push_fail"] == 0.25 and updated["rates"]["throttle"] == 1.0
    assert updated["rates"]["duplicate_frame"] == 0.0
    assert get_faults(cloud)["rates"] == updated["rates"]


@pytest.mark.parametrize(
    "body",
    [b'{"rates": {"nonsense": 0.5}}', b'{"rates": {"push_fail": 1.5}}', b'{"rates": {"push_fail": "x"}}',
     b'{"rates": {"push_fail": 1, "throttle": -1}}', b"not json", b'{"push_fail": 1}'],
)
def test_a_bad_put_is_a_400_and_changes_nothing(cloud, rates, body):
    before = get_faults(cloud)["rates"]
    status, error = put_error(cloud, body)
    assert status == 400 and error["message"]
    assert get_faults(cloud)["rates"] == before


# --- gateway faults ------------------------------------------------------------------


def test_drop_connection_on_a_client_frame_aborts_without_close_frame_and_runs_disconnect(cloud, rates):
    async def scenario() -> str:
        async with websockets.connect(cloud.websocket_url) as ws:
            cid = await whoami(ws)
            rates(drop_connection=1)
            await ws.send(json.dumps({"action": "count", "id": new_id()}))
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    await ws.recv()  # the frame may have been dispatched first
            assert closed.value.rcvd is None  # no close frame: the TCP connection dropped
            return cid

    before = injected(cloud, "drop_connection")
    cid = run(scenario())
    assert eventually(lambda: item(cloud, "disconnect#" + cid))["code"] == "1006"
    assert injected(cloud, "drop_connection") == before + 1


def test_drop_connection_on_a_push_aborts_the_connection(cloud, rates):
    management = cloud.client("apigatewaymanagementapi")

    async def scenario() -> tuple[str, str]:
        async with websockets.connect(cloud.websocket_url) as ws:
            cid = await whoami(ws)
            rates(drop_connection=1)
            try:
                await asyncio.to_thread(management.post_to_connection, ConnectionId=cid, Data=b"x")
                outcome = "sent"  # dropped just after the frame was handed to the socket
            except management.exceptions.GoneException:
                outcome = "gone"  # dropped instead of the push
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is None
            return cid, outcome

    before = injected(cloud, "drop_connection")
    cid, outcome = run(scenario())
    assert outcome in ("sent", "gone")
    assert eventually(lambda: item(cloud, "disconnect#" + cid))["code"] == "1006"
    assert injected(cloud, "drop_connection") == before + 1


def test_duplicate_frame_runs_the_handler_twice(cloud, rates):
    frame_id = new_id()

    async def scenario() -> list[Any]:
        async with websockets.connect(cloud.websocket_url) as ws:
            rates(duplicate_frame=1)
            await ws.send(json.dumps({"action": "count", "id": frame_id}))
            return await frames_until(ws, lambda frames: len(frames) >= 2)

    before = injected(cloud, "duplicate_frame")
    assert run(scenario()) == [{"counted": frame_id}] * 2
    assert item(cloud, "count#" + frame_id)["n"] == "2"
    assert injected(cloud, "duplicate_frame") == before + 1


def test_push_fail_delivers_nothing_and_the_caller_sees_a_500(cloud, rates):
    push_id = new_id()

    async def scenario() -> list[Any]:
        async with websockets.connect(cloud.websocket_url) as ws:
            rates(push_fail=1)
            await ws.send(json.dumps({"action": "push", "id": push_id}))
            return await frames_within(ws, 1.5)

    before = injected(cloud, "push_fail")
    assert run(scenario()) == []
    assert eventually(lambda: item(cloud, "push#" + push_id))["outcome"] == "InternalServerErrorException"
    assert injected(cloud, "push_fail") == before + ATTEMPTS  # botocore retried the 500


def test_lose_push_answers_200_and_delivers_nothing(cloud, rates):
    """The one real loss (to check the chaos checker): the caller is told "sent", the client gets nothing."""
    push_id = new_id()

    async def scenario() -> list[Any]:
        async with websockets.connect(cloud.websocket_url) as ws:
            rates(lose_push=1)
            await ws.send(json.dumps({"action": "push", "id": push_id}))
            assert eventually(lambda: item(cloud, "push#" + push_id))["outcome"] == "ok"
            return await frames_within(ws, 0.5)

    before = injected(cloud, "lose_push")
    assert run(scenario()) == []
    assert injected(cloud, "lose_push") == before + 1


def test_push_lost_ack_delivers_and_the_caller_sees_a_500(cloud, rates):
    push_id = new_id()

    async def scenario() -> list[Any]:
        async with websockets.connect(cloud.websocket_url) as ws:
            rates(push_lost_ack=1)
            await ws.send(json.dumps({"action": "push", "id": push_id}))
            return await frames_until(ws, lambda frames: len(frames) >= ATTEMPTS)

    before = injected(cloud, "push_lost_ack")
    # Delivered on every attempt: botocore retried what it thought had failed.
    assert run(scenario()) == [{"push": push_id}] * ATTEMPTS
    assert eventually(lambda: item(cloud, "push#" + push_id))["outcome"] == "InternalServerErrorException"
    assert injected(cloud, "push_lost_ack") == before + ATTEMPTS


# --- crashes of the message handler ------------------------------------------------------


def send_and_collect(cloud: LocalCloud, frame_id: str, done: Any, settle: float) -> list[Any]:
    """Send one frame; collect frames until ``done(frames)``, then for ``settle`` seconds more."""
    async def scenario() -> list[Any]:
        async with websockets.connect(cloud.websocket_url) as ws:
            await ws.send(json.dumps({"action": "send", "id": frame_id}))
            return await frames_until(ws, done, settle)

    return run(scenario())


def test_crash_before_commit_stores_nothing_and_the_client_gets_internal_error(cloud, rates):
    rates(crash_before_commit=1)
    frame_id, before = new_id(), injected(cloud, "crash_before_commit")
    frames = send_and_collect(cloud, frame_id, lambda frames: frames, 1.0)
    assert len(frames) == 1 and is_internal_error(frames[0])
    assert item(cloud, "msg#" + frame_id) is None
    assert injected(cloud, "crash_before_commit") == before + 1


def test_crash_after_commit_stores_but_never_enqueues(cloud, rates):
    rates(crash_after_commit=1)
    frame_id, before = new_id(), injected(cloud, "crash_after_commit")
    frames = send_and_collect(cloud, frame_id, lambda frames: frames, 2.5)  # time for a consumer to push
    assert len(frames) == 1 and is_internal_error(frames[0])
    assert item(cloud, "msg#" + frame_id) is not None
    assert item(cloud, "consumed#" + frame_id) is None
    assert injected(cloud, "crash_after_commit") == before + 1


def test_crash_after_enqueue_stores_and_enqueues_but_never_replies(cloud, rates):
    rates(crash_after_enqueue=1)
    frame_id, before = new_id(), injected(cloud, "crash_after_enqueue")
    frames = send_and_collect(
        cloud, frame_id,
        lambda frames: any(map(is_internal_error, frames)) and {"pushed": frame_id, "attempt": 1} in frames, 1.0)
    assert sum(map(is_internal_error, frames)) == 1
    assert {"pushed": frame_id, "attempt": 1} in frames  # the consumer got it
    assert {"ok": frame_id} not in frames
    assert item(cloud, "msg#" + frame_id) is not None
    assert eventually(lambda: item(cloud, "consumed#" + frame_id))
    assert injected(cloud, "crash_after_enqueue") == before + 1


# --- the consumer ----------------------------------------------------------------------


def test_consumer_crash_after_a_push_leaves_the_batch_for_redelivery(cloud, rates):
    frame_id = new_id()
    before = injected(cloud, "consumer_crash")

    async def scenario() -> tuple[list[Any], Any]:
        async with websockets.connect(cloud.websocket_url) as ws:
            rates(consumer_crash=1)
            await ws.send(json.dumps({"action": "send", "id": frame_id}))
            frames = []
            # Visibility timeout 1 s: the crashed batch comes back.
            while {"pushed": frame_id, "attempt": 2} not in frames:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            assert item(cloud, "consumed#" + frame_id) is None  # it died right after each push
            rates(consumer_crash=0)
            while not any(f.get("pushed") == frame_id and f["attempt"] >= 3 for f in frames):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            # Connected until the batch is consumed: an invocation that began before the
            # rate went to 0 still crashes (on a busy machine, the third may), and the
            # next one must find the connection to push to.
            consumed = await asyncio.to_thread(eventually, lambda: item(cloud, "consumed#" + frame_id))
            return frames, consumed

    frames, consumed = run(scenario())
    assert {"ok": frame_id} in frames
    assert int(consumed["attempt"]) >= 3
    assert injected(cloud, "consumer_crash") >= before + 2


# --- throttling -----------------------------------------------------------------------------


def test_throttle_at_rate_1_fails_after_botocores_retries(cloud, rates):
    async def scenario() -> Any:
        async with websockets.connect(cloud.websocket_url) as ws:
            rates(throttle=1)
            await ws.send(json.dumps({"action": "throttle", "id": "-"}))
            reply = json.loads(await ws.recv())  # the reply goes through the management API
            # Counted before the close: $disconnect's own write is throttled too.
            return reply, injected(cloud, "throttle")

    before = injected(cloud, "throttle")
    outcome, after = run(scenario())
    assert outcome == {
        "dynamodb": {"ok": False, "code": "ProvisionedThroughputExceededException", "retries": ATTEMPTS - 1},
        "sqs": {"ok": False, "code": "ThrottlingException", "retries": ATTEMPTS - 1},
    }
    # At least: the $disconnect of an earlier test's connection may still be running
    # (it is late on a busy machine) and be throttled too. The reply above already
    # shows each call's attempts exactly.
    assert after >= before + 2 * ATTEMPTS


@pytest.fixture
def in_process() -> Any:
    """Install an injector in this process; uninstall afterwards."""
    installed: list[faults.FaultInjector] = []

    def install(rates: dict[str, float], seed: int | None = None) -> faults.FaultInjector:
        injector = faults.FaultInjector(rates, seed=seed)
        faults.install(injector)
        installed.append(injector)
        return injector

    yield install
    faults.uninstall()


@pytest.fixture
def no_backoff(monkeypatch):
    """botocore sleeps between retries in its endpoint: record instead of sleeping."""
    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint.time, "sleep", sleeps.append)
    return sleeps


def local_client(service: str, endpoint: str, mode: str = "standard") -> Any:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    return session.client(service, endpoint_url=endpoint, config=Config(retries={"mode": mode}))


@pytest.mark.parametrize("mode, dynamodb_attempts, sqs_attempts", [("standard", 4, 3), ("legacy", 10, 5)])
def test_throttle_is_retried_by_botocore_then_raises_the_throttling_code(in_process, no_backoff, mode, dynamodb_attempts, sqs_attempts):
    injector = in_process({"throttle": 1.0})
    unreachable = "http://127.0.0.1:9"  # never reached: every attempt is answered by the hook
    dynamodb = local_client("dynamodb", unreachable, mode)
    sqs = local_client("sqs", unreachable, mode)
    with faults.invocation("fn", SQS_EVENT):
        with pytest.raises(ClientError) as throttled:
            dynamodb.get_item(TableName="t", Key={"pk": {"S": "a"}})
        assert throttled.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
        assert throttled.value.response["ResponseMetadata"]["RetryAttempts"] == dynamodb_attempts - 1
        with pytest.raises(ClientError) as throttled:
            sqs.get_queue_url(QueueName="q")
        assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
        assert throttled.value.response["ResponseMetadata"]["RetryAttempts"] == sqs_attempts - 1
    assert injector.counts()["throttle"] == dynamodb_attempts + sqs_attempts
    assert len(no_backoff) == dynamodb_attempts + sqs_attempts - 2


def test_throttle_at_half_rate_succeeds_after_retries(cloud, in_process, no_backoff):
    injector = in_process({"throttle": 0.5}, seed=3)
    dynamodb = local_client("dynamodb", cloud.aws_endpoint)
    sqs = local_client("sqs", cloud.aws_endpoint)
    retries = 0
    with faults.invocation("fn", MESSAGE_EVENT):
        for _ in range(5):
            retries += dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "x"}})["ResponseMetadata"]["RetryAttempts"]
            retries += sqs.get_queue_url(QueueName="faults-local-work.fifo")["ResponseMetadata"]["RetryAttempts"]
    assert retries == injector.counts()["throttle"] > 0


def test_the_local_clouds_own_calls_are_never_injected(in_process, no_backoff):
    injector = in_process(dict.fromkeys(faults.KINDS, 1.0))
    sqs = local_client("sqs", "http://127.0.0.1:9")
    sqs.meta.events.register("before-send.sqs", lambda **kw: faults.throttling_response("sqs", "x"))
    # Outside an invocation (the poller's receive and delete, stack deployment)
    # the hooks do nothing: the only answer is the stand-in registered above.
    with pytest.raises(ClientError):
        sqs.get_queue_url(QueueName="q")
    assert injector.counts() == dict.fromkeys(faults.ALL_KINDS, 0)


# --- crashes in process -----------------------------------------------------------------------


class _Http:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


def test_an_injected_crash_is_not_swallowed_by_except_exception(in_process):
    in_process({"crash_before_commit": 1.0})
    dynamodb = local_client("dynamodb", "http://127.0.0.1:9")
    survived = []

    def handler(event: Any, context: Any) -> None:
        try:
            dynamodb.transact_write_items(TransactItems=ONE_PUT)
        except Exception:
            survived.append(True)

    with pytest.raises(InvocationCrashed):
        LambdaFunction("fn", handler).invoke(MESSAGE_EVENT)
    assert survived == []


def test_crashes_of_the_message_path_only_strike_websocket_message_invocations(in_process):
    injector = in_process({"crash_before_commit": 1.0})
    dynamodb = local_client("dynamodb", "http://127.0.0.1:9")
    dynamodb.meta.events.register("before-send.dynamodb", lambda **kw: faults.throttling_response("dynamodb", "x"))

    def handler(event: Any, context: Any) -> None:
        with pytest.raises(ClientError):  # not a crash: the stand-in answer above
            dynamodb.transact_write_items(TransactItems=ONE_PUT)

    LambdaFunction("fn", handler).invoke(SQS_EVENT)
    assert injector.counts()["crash_before_commit"] == 0


def test_consumer_crash_picks_a_push_within_the_batch_and_counts_only_a_death(in_process):
    injector = in_process({"consumer_crash": 1.0}, seed=1)
    hooks = faults._ClientHooks(injector)
    batch = {"Records": [{"eventSource": "aws:sqs"}] * 3}
    with faults.invocation("fn", batch) as running:
        assert running is not None and 1 <= running.crash_at_push <= 3
        for _ in range(running.crash_at_push - 1):
            hooks._after_post(http_response=_Http(200))
        hooks._after_post(http_response=_Http(410))  # a failed push is not counted
        with pytest.raises(faults.InjectedCrash):
            hooks._after_post(http_response=_Http(200))
    assert injector.counts()["consumer_crash"] == 1
    with faults.invocation("fn", {"Records": [{"eventSource": "aws:sqs"}]}) as running:
        assert running is not None and running.crash_at_push == 1
        # No push at all: it does not die, and nothing is counted.
    assert injector.counts()["consumer_crash"] == 1


def test_hooks_at_rate_0_draw_nothing_and_take_no_lock(in_process):
    """At rate 0 a hook is one dictionary read: no random draw, no lock (what makes it cheap)."""
    injector = in_process({})
    hooks = faults._ClientHooks(injector)

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"rate 0 touched {name}")

    random_source, lock = injector._random, injector._lock
    injector._random, injector._lock = Untouchable(), Untouchable()
    try:
        with faults.invocation("fn", MESSAGE_EVENT):
            for _ in range(100):
                assert hooks._before_send(request=None, event_name="before-send.dynamodb.PutItem") is None
    finally:
        injector._random, injector._lock = random_source, lock
    assert injector.counts()["throttle"] == 0


# --- spec and flags ------------------------------------------------------------------------------


def test_spec_all_then_overrides():
    rates = faults.parse_spec("all=0.1,push_fail=0")
    assert rates == dict(dict.fromkeys(faults.KINDS, 0.1), push_fail=0.0)
    assert faults.LOSE_PUSH not in rates  # all= is what AWS does; a real loss must be named
    assert faults.parse_spec("lose_push=0.5") == {"lose_push": 0.5}
    assert faults.parse_spec(" throttle=1 , ") == {"throttle": 1.0}
    assert faults.parse_spec("") == {}


@pytest.mark.parametrize("spec", ["bogus=1", "throttle=2", "throttle", "throttle=x", "all=-0.1"])
def test_bad_specs_are_rejected(spec):
    with pytest.raises(faults.FaultSpecError):
        faults.parse_spec(spec)


def test_fault_flags_and_their_environment_variables():
    assert build_parser({}).parse_args(["run"]).faults is None  # off by default
    args = build_parser({"ONCECHAT_LOCAL_FAULTS": "all=0.1,push_fail=0", "ONCECHAT_LOCAL_FAULT_SEED": "42"}).parse_args(["run"])
    assert args.faults["push_fail"] == 0.0 and args.faults["drop_connection"] == 0.1
    assert args.fault_seed == 42
    args = build_parser({}).parse_args(["run", "--faults", "throttle=0.5", "--fault-seed", "1"])
    assert (args.faults, args.fault_seed) == ({"throttle": 0.5}, 1)
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["run", "--faults", "nonsense=1"])


# --- off by default ------------------------------------------------------------------------------


def test_faults_are_off_by_default_and_nothing_changes():
    with LocalCloud(FAULTS_APP) as plain:
        state = get_faults(plain)
        assert state == {"rates": dict.fromkeys(faults.ALL_KINDS, 0.0),
                         "injected": dict.fromkeys(faults.ALL_KINDS, 0)}
        status, error = put_error(plain, b'{"rates": {"throttle": 1}}')
        assert status == 409 and "--faults" in error["message"]
        frame_id = new_id()
        frames = send_and_collect(
            plain, frame_id, lambda frames: {"ok": frame_id} in frames and {"pushed": frame_id, "attempt": 1} in frames,
            0.0)
        assert {"ok": frame_id} in frames and {"pushed": frame_id, "attempt": 1} in frames
    log = plain.log()
    assert "fault injection on" not in log and "faults injected" not in log


def test_the_counts_are_summarised_when_the_cloud_stops():
    with LocalCloud(APPS_DIR / "bare", "--faults", "duplicate_frame=1") as running:
        assert get_faults(running)["rates"]["duplicate_frame"] == 1.0
    summary = [line for line in running.log().splitlines() if "faults injected:" in line]
    assert len(summary) == 1
    assert all(f"{kind}=0" in summary[0] for kind in faults.ALL_KINDS)
