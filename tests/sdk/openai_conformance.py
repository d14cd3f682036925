"""The official `openai` Python SDK against `orchestrator sim`.

Our simulator agreeing with our own client proves little; this script uses
the code OpenAI ships. It exits non-zero (with the failed check) if the
simulator answers anything the SDK does not accept, or accepts what the real
API would refuse. Run by tests/sdk.rs with OPENAI_BASE_URL (ending in /v1)
and OPENAI_API_KEY set; the simulator accepts only that key.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import openai

BASE_URL = os.environ["OPENAI_BASE_URL"]
client = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
MODEL = "gpt-4o-mini"


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def line(custom_id, text, **body):
    body = {"model": MODEL, "max_completion_tokens": 32, "messages": [{"role": "user", "content": text}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def upload(lines, name="input.jsonl"):
    data = "".join(json.dumps(entry) + "\n" for entry in lines).encode()
    file = client.files.create(file=(name, data, "application/jsonl"), purpose="batch")
    check(file.id.startswith("file-") and file.bytes == len(data), f"files.create keeps {name} ({file.bytes} bytes)")
    return file


def create(lines, tag):
    file = upload(lines)
    return client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"orchestrator_batch": tag},
    )


def wait(batch_id, until=("completed", "failed", "expired", "cancelled"), within=60):
    start = time.time()
    while time.time() - start < within:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        time.sleep(0.2)
    raise SystemExit(f"FAILED: batch {batch_id} did not reach {until} within {within} s")


def lines_of(file_id):
    text = client.files.content(file_id).text
    return [json.loads(entry) for entry in text.splitlines() if entry.strip()]


# Chat Completions.
completion = client.chat.completions.create(
    model=MODEL,
    max_completion_tokens=32,
    messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Label this: a test"}],
)
check(completion.object == "chat.completion" and completion.id.startswith("chatcmpl-"), "chat.completions.create")
choice = completion.choices[0]
check(choice.message.role == "assistant" and choice.message.content, "answers an assistant message with content")
check(choice.finish_reason in ("stop", "length"), f"and a finish reason ({choice.finish_reason})")
usage = completion.usage
check(usage.prompt_tokens > 0 and usage.completion_tokens > 0, "and its usage")
check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, "whose total adds up")
check(usage.prompt_tokens_details.cached_tokens == 0, "a short prompt has no cached tokens")
raw = client.chat.completions.with_raw_response.create(
    model=MODEL, max_completion_tokens=8, messages=[{"role": "user", "content": "hi"}]
)
check(raw.headers.get("x-request-id", "").startswith("req_"), "every answer carries an x-request-id header")
check(raw.headers.get("x-ratelimit-remaining-requests") is not None, "and the rate-limit headers")

# Batches: upload, create, retrieve until completed, download the output file.
batch = create([line(f"conf-{n:03}", f"item {n}") for n in range(5)], "conformance")
check(batch.object == "batch" and batch.id.startswith("batch_"), "batches.create returns a Batch")
check(batch.status == "validating", f"validating at first ({batch.status})")
check(batch.endpoint == "/v1/chat/completions" and batch.completion_window == "24h", "for the endpoint and window")
check(batch.metadata == {"orchestrator_batch": "conformance"}, "keeping its metadata")
done = wait(batch.id)
check(done.status == "completed", f"the batch completes ({done.status})")
check(done.request_counts.total == 5 and done.request_counts.completed == 5, "its counts add up")
check(done.output_file_id, "a completed batch has an output file")
check(done.error_file_id in (None, ""), f"a clean batch has no error file ({done.error_file_id!r})")
check(done.completed_at is not None and done.in_progress_at is not None, "with its timestamps")
output = lines_of(done.output_file_id)
check(sorted(entry["custom_id"] for entry in output) == [f"conf-{n:03}" for n in range(5)], "output names each one")
check(all(e["response"]["status_code"] == 200 for e in output), "each line answered 200")
body = openai.types.chat.ChatCompletion.model_validate(output[0]["response"]["body"])
check(body.choices[0].message.content and body.usage.prompt_tokens > 0, "a line's body is a ChatCompletion")
check(client.files.retrieve(done.output_file_id).purpose == "batch_output", "the output file is batch_output")

# A refused request fails alone, in the error file.
mixed = create([line("good", "fine"), line("bad", "refused", temperature=5)], "mixed")
done = wait(mixed.id)
check(done.status == "completed", f"a batch with a refused request still completes ({done.status})")
check((done.request_counts.completed, done.request_counts.failed) == (1, 1), "one completed, one failed")
check(done.output_file_id and done.error_file_id, "with both files")
errors = lines_of(done.error_file_id)
check([e["custom_id"] for e in errors] == ["bad"], "the error file names the refused request")
check(errors[0]["response"]["status_code"] == 400, "as a 400")
check(errors[0]["response"]["body"]["error"]["type"] == "invalid_request_error", "with an invalid_request_error")
check([e["custom_id"] for e in lines_of(done.output_file_id)] == ["good"], "the output file the other")

# A file that fails validation fails the batch, naming the line.
invalid = create([line("twice", "a"), line("twice", "b")], "invalid")
failed = wait(invalid.id)
check(failed.status == "failed", f"duplicate custom_ids fail the batch ({failed.status})")
check(failed.errors and failed.errors.data, "with errors")
check(failed.errors.data[0].line == 2, f"at the second line ({failed.errors.data[0].line})")
check(failed.output_file_id is None and failed.error_file_id is None, "and no files")

# List with pagination: the SDK follows `after` itself.
for n in range(2):
    create([line(f"page-{n}", "x")], f"page-{n}")
page = client.batches.list(limit=2)
check(len(page.data) == 2 and page.has_more, "a page of two with more behind it")
check(page.data[0].metadata == {"orchestrator_batch": "page-1"}, "newest first")
seen = [b.id for b in client.batches.list(limit=2)]
check(len(seen) == 5 and len(set(seen)) == 5, f"auto-pagination walks all five batches once ({len(seen)})")

# Cancel.
slow = create([line("cancel-me", "x")], "cancel")
canceling = client.batches.cancel(slow.id)
check(canceling.status in ("cancelling", "cancelled"), f"cancel answers cancelling ({canceling.status})")
check(canceling.cancelling_at is not None, "with cancelling_at")
ended = wait(slow.id, until=("cancelled", "completed"))
check(ended.status == "cancelled", f"a cancelled batch ends cancelled ({ended.status})")

# Errors, as the SDK types them.
try:
    client.batches.retrieve("batch_doesnotexist")
    check(False, "an unknown batch is refused")
except openai.NotFoundError as error:
    check(error.status_code == 404, "an unknown batch is a NotFoundError (404)")
try:
    client.files.content("file-doesnotexist")
    check(False, "an unknown file is refused")
except openai.NotFoundError as error:
    check(error.status_code == 404, "an unknown file is a NotFoundError (404)")
wrong = openai.OpenAI(base_url=BASE_URL, api_key="sk-wrong", max_retries=0)
try:
    wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    check(False, "a wrong key is refused")
except openai.AuthenticationError as error:
    check(error.status_code == 401 and error.code == "invalid_api_key", "a wrong key is an AuthenticationError (401)")
# The SDK refuses to send without a key, so that 401 is checked on the wire.
unauthenticated = urllib.request.Request(
    BASE_URL + "/chat/completions",
    data=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode(),
    headers={"content-type": "application/json"},
)
try:
    urllib.request.urlopen(unauthenticated)
    check(False, "a call without a key is refused")
except urllib.error.HTTPError as error:
    body = json.loads(error.read())
    check(error.code == 401 and "API key" in body["error"]["message"], "a call without a key is a 401")
try:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=3)
    check(False, "a temperature above 2 is refused")
except openai.BadRequestError as error:
    check(error.status_code == 400, "a temperature above 2 is a BadRequestError (400)")
try:
    client.batches.create(input_file_id="file-doesnotexist", endpoint="/v1/chat/completions", completion_window="24h")
    check(False, "a batch of an unknown file is refused")
except (openai.NotFoundError, openai.BadRequestError) as error:
    check(error.status_code in (400, 404), f"a batch of an unknown file is refused ({error.status_code})")
print("all checks passed")
