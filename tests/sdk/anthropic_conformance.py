"""The official `anthropic` Python SDK against `orchestrator sim`.

Our simulator agreeing with our own client proves little; this script uses
the code Anthropic ships. It exits non-zero (with the failed check) if the
simulator answers anything the SDK does not accept, or accepts what the real
API would refuse. Run by tests/sdk.rs with ANTHROPIC_BASE_URL set.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import anthropic

BASE_URL = os.environ["ANTHROPIC_BASE_URL"]
client = anthropic.Anthropic(base_url=BASE_URL, api_key="sk-ant-test", max_retries=0)


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def request(custom_id, text):
    return {
        "custom_id": custom_id,
        "params": {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": text}]},
    }


def wait_ended(batch_id, within=60):
    start = time.time()
    while time.time() - start < within:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        time.sleep(0.2)
    raise SystemExit(f"FAILED: batch {batch_id} did not end within {within} s")


# Messages.
message = client.messages.create(
    model="claude-haiku-4-5",
    max_tokens=32,
    system="Answer briefly.",
    messages=[{"role": "user", "content": "Label this: a conformance test"}],
)
check(message.type == "message" and message.role == "assistant", "messages.create returns a Message")
check(message.content and message.content[0].type == "text" and message.content[0].text, "with a text block")
check(message.usage.input_tokens > 0 and message.usage.output_tokens > 0, "and its usage")
check(message.stop_reason in ("end_turn", "max_tokens"), f"and a stop reason ({message.stop_reason})")
raw = client.messages.with_raw_response.create(
    model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
)
check(raw.headers.get("request-id", "").startswith("req_"), "every answer carries a request-id header")

# Message Batches: create, retrieve, results.
batch = client.messages.batches.create(requests=[request(f"conf-{n:03}", f"item {n}") for n in range(5)])
check(batch.type == "message_batch" and batch.id, "batches.create returns a MessageBatch")
check(batch.processing_status == "in_progress", "in progress at first")
check(batch.request_counts.processing == 5, "with every request processing")
ended = wait_ended(batch.id)
check(ended.results_url, "an ended batch has a results_url")
check(ended.request_counts.succeeded == 5, "and its counts add up")
results = list(client.messages.batches.results(batch.id))
check(sorted(r.custom_id for r in results) == [f"conf-{n:03}" for n in range(5)], "results name every custom_id")
check(all(r.result.type == "succeeded" and r.result.message.content for r in results), "each succeeded with a message")

# List with pagination: the SDK follows after_id itself.
for n in range(3):
    client.messages.batches.create(requests=[request(f"page-{n}", "x")])
page = client.messages.batches.list(limit=2)
check(len(page.data) == 2 and page.has_more, "a page of two with more behind it")
seen = [b.id for b in client.messages.batches.list(limit=2)]
check(len(seen) == 4 and len(set(seen)) == 4, f"auto-pagination walks all four batches once ({len(seen)})")

# Cancel.
slow = client.messages.batches.create(requests=[request("cancel-me", "x")])
canceling = client.messages.batches.cancel(slow.id)
check(canceling.processing_status in ("canceling", "ended"), "cancel answers canceling")
check(canceling.cancel_initiated_at is not None, "with cancel_initiated_at")
ended = wait_ended(slow.id)
kinds = [r.result.type for r in client.messages.batches.results(slow.id)]
check(kinds in (["canceled"], ["succeeded"]), f"a canceled batch ends; its request canceled or done ({kinds})")

# Errors, as the SDK types them.
try:
    client.messages.batches.retrieve("msgbatch_doesnotexist")
    check(False, "an unknown batch is refused")
except anthropic.NotFoundError as error:
    check(error.status_code == 404, "an unknown batch is a NotFoundError (404)")
# The SDK refuses to send without a key, so the 401 is checked on the wire.
unauthenticated = urllib.request.Request(
    BASE_URL + "/v1/messages",
    data=json.dumps({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode(),
    headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
)
try:
    urllib.request.urlopen(unauthenticated)
    check(False, "a call without a key is refused")
except urllib.error.HTTPError as error:
    body = json.loads(error.read())
    check(error.code == 401 and body["error"]["type"] == "authentication_error", "a call without a key is a 401 authentication_error")
wrong = anthropic.Anthropic(base_url=BASE_URL, api_key="sk-ant-test", max_retries=0)
try:
    wrong.messages.create(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], max_tokens=8, extra_body={"temperature": 5})
    check(False, "a temperature above 1 is refused")
except anthropic.BadRequestError as error:
    check(error.status_code == 400, "a temperature above 1 is a BadRequestError (400)")
warm = wrong.messages.create(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
check(warm.usage.output_tokens == 0, "max_tokens 0 is a cache pre-warm with no output")
try:
    client.messages.batches.create(requests=[request("dup", "a"), request("dup", "b")])
    check(False, "duplicate custom_ids are refused")
except anthropic.BadRequestError as error:
    check(error.status_code == 400, "duplicate custom_ids are a BadRequestError (400)")
print("all checks passed")
