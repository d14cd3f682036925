"""The official `google-genai` Python SDK against `orchestrator sim`.

Our simulator agreeing with our own client proves little; this script uses
the code Google ships. It exits non-zero (with the failed check) if the
simulator answers anything the SDK does not accept, or accepts what the real
API would refuse. Run by tests/sdk.rs with GOOGLE_GEMINI_BASE_URL and
GEMINI_API_KEY set; the simulator accepts only that key.
"""

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

from google import genai
from google.genai import errors, types

BASE_URL = os.environ["GOOGLE_GEMINI_BASE_URL"]
KEY = os.environ["GEMINI_API_KEY"]
client = genai.Client(api_key=KEY, http_options={"base_url": BASE_URL, "api_version": "v1beta"})
MODEL = "gemini-2.5-flash"
DONE = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def state(job):
    return job.state.name if hasattr(job.state, "name") else str(job.state)


def wait(name, within=60):
    start = time.time()
    while time.time() - start < within:
        job = client.batches.get(name=name)
        if state(job) in DONE:
            return job
        time.sleep(0.2)
    raise SystemExit(f"FAILED: batch {name} did not end within {within} s")


def request(key, text, **config):
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], "metadata": {"key": key},
            "config": {"max_output_tokens": 32, **config}}


# generateContent.
answer = client.models.generate_content(
    model=MODEL,
    contents="Label this: a conformance test",
    config=types.GenerateContentConfig(system_instruction="Answer briefly.", max_output_tokens=32, temperature=0.2),
)
check(answer.candidates and answer.text, "generate_content answers a candidate with text")
check(answer.candidates[0].finish_reason is not None, f"and a finish reason ({answer.candidates[0].finish_reason})")
usage = answer.usage_metadata
check(usage.prompt_token_count > 0 and usage.candidates_token_count > 0, "and its usage")
check(usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count, "whose total adds up")

# Batches with inline requests.
job = client.batches.create(model=MODEL, src=[request(f"conf-{n}", f"item {n}") for n in range(4)],
                            config={"display_name": "orchestrator-batch-conformance"})
check(job.name.startswith("batches/"), f"batches.create names the job ({job.name})")
check(state(job) in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"), f"pending at first ({state(job)})")
check(job.display_name == "orchestrator-batch-conformance", "keeping its display name")
done = wait(job.name)
check(state(done) == "JOB_STATE_SUCCEEDED", f"the job succeeds ({state(done)})")
check(done.create_time is not None and done.end_time is not None, "with its times")
inline = done.dest.inlined_responses
check(inline and len(inline) == 4, "the output is inline, one response per request")
keys = sorted(r.metadata["key"] for r in inline)
check(keys == [f"conf-{n}" for n in range(4)], f"each names its key ({keys})")
check(all(r.response and r.response.text for r in inline), "each with a response that has text")

# A refused request fails alone.
mixed = client.batches.create(model=MODEL, src=[request("good", "fine"), request("bad", "refused", temperature=5.0)])
done = wait(mixed.name)
check(state(done) == "JOB_STATE_SUCCEEDED", "a job with a refused request still succeeds")
by_key = {r.metadata["key"]: r for r in done.dest.inlined_responses}
check(by_key["good"].response is not None and by_key["good"].error is None, "the good request answered")
check(by_key["bad"].error is not None and by_key["bad"].response is None, "the refused one carries an error")

# Batches from an uploaded file, through the resumable upload.
lines = [{"key": f"file-{n}", "request": {"contents": [{"role": "user", "parts": [{"text": f"line {n}"}]}],
                                          "generationConfig": {"maxOutputTokens": 16}}} for n in range(3)]
with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
    handle.write("".join(json.dumps(line) + "\n" for line in lines))
    path = handle.name
uploaded = client.files.upload(file=path, config={"mime_type": "application/jsonl", "display_name": "conformance-input"})
check(uploaded.name.startswith("files/"), f"files.upload makes a file ({uploaded.name})")
check(int(uploaded.size_bytes) == os.path.getsize(path), "of the uploaded size")
check(client.files.get(name=uploaded.name).display_name == "conformance-input", "files.get finds it")
from_file = client.batches.create(model=MODEL, src=uploaded.name)
done = wait(from_file.name)
check(state(done) == "JOB_STATE_SUCCEEDED", "the file job succeeds")
check(done.dest.file_name and done.dest.file_name.startswith("files/"), f"its output is a file ({done.dest.file_name})")
content = client.files.download(file=done.dest.file_name)
results = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
check(sorted(r["key"] for r in results) == ["file-0", "file-1", "file-2"], "the responses file names each key")
check(all(r["response"]["candidates"][0]["content"]["parts"][0]["text"] for r in results), "with a response each")
generated = client.files.get(name=done.dest.file_name)
check(generated.download_uri and str(generated.source).endswith("GENERATED"), "a generated file can be downloaded")
client.files.delete(name=uploaded.name)
try:
    client.files.get(name=uploaded.name)
    check(False, "a deleted file is gone")
except errors.ClientError as error:
    check(error.code == 404, "a deleted file is gone (404)")

# List with pagination: the pager follows nextPageToken itself.
names = [b.name for b in client.batches.list(config={"page_size": 2})]
check(len(names) == 3 and len(set(names)) == 3, f"batches.list walks every job once ({len(names)})")
check(names[0] == from_file.name, "newest first")

# Cancel, then delete.
slow = client.batches.create(model=MODEL, src=[request("cancel-me", "x")])
client.batches.cancel(name=slow.name)
ended = wait(slow.name)
check(state(ended) in ("JOB_STATE_CANCELLED", "JOB_STATE_SUCCEEDED"), f"a cancelled job ends ({state(ended)})")
client.batches.delete(name=slow.name)
try:
    client.batches.get(name=slow.name)
    check(False, "a deleted job is gone")
except errors.ClientError as error:
    check(error.code == 404, "a deleted job is gone (404)")

# Errors, as the SDK raises them.
try:
    client.batches.get(name="batches/doesnotexist")
    check(False, "an unknown job is refused")
except errors.ClientError as error:
    check(error.code == 404 and error.status == "NOT_FOUND", "an unknown job is a 404 NOT_FOUND")
wrong = genai.Client(api_key="wrong-key", http_options={"base_url": BASE_URL, "api_version": "v1beta"})
try:
    wrong.models.generate_content(model=MODEL, contents="hi")
    check(False, "a wrong key is refused")
except errors.ClientError as error:
    check(error.code == 400 and "API key not valid" in error.message, "a wrong key is refused (400)")
# The SDK refuses to send without a key, so that refusal is checked on the wire.
unauthenticated = urllib.request.Request(
    f"{BASE_URL}/v1beta/models/{MODEL}:generateContent",
    data=json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode(),
    headers={"content-type": "application/json"},
)
try:
    urllib.request.urlopen(unauthenticated)
    check(False, "a call without a key is refused")
except urllib.error.HTTPError as error:
    body = json.loads(error.read())
    check(error.code == 403 and body["error"]["status"] == "PERMISSION_DENIED", "a call without a key is a 403")
try:
    client.models.generate_content(model=MODEL, contents="hi", config={"temperature": 3.0})
    check(False, "a temperature above 2 is refused")
except errors.ClientError as error:
    check(error.code == 400 and error.status == "INVALID_ARGUMENT", "a temperature above 2 is a 400 INVALID_ARGUMENT")
print("all checks passed")
