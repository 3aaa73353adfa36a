#!/usr/bin/env python3
"""Check the project's factfile extension schema (JSON Schema draft-04) and the samples.

Usage: python3 scripts/check-schemas.py

- schemas/io.factotum/factfile/jsonschema/1-0-0 is a valid draft-04 schema and a valid
  self-describing Iglu schema (self = io.factotum/factfile/jsonschema/1-0-0);
- every samples/*.factfile validates against the schema named by its "schema" URI: ours, or
  Snowplow's factfile 1-0-0 from $FACTOTUM_SHARED/iglu (default <repo>/../shared);
- ours is the Snowplow document plus optional fields: a Snowplow document with one extension field
  is rejected by Snowplow's schema and accepted by ours under our URI; Snowplow's verdict on its
  own samples ($FACTOTUM_SHARED/factotum-samples) is ours once the URI is swapped;
- invalid extension documents are rejected by ours.

Prints one line per failure and a one-line summary; exits 1 on any failure. Needs python3 and
jsonschema (installed with pip on first use if missing)."""
import copy, glob, json, os, subprocess, sys

try:
    import jsonschema
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "jsonschema"], check=False)
    import jsonschema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("FACTOTUM_SHARED") or os.path.join(REPO, "..", "shared")
OURS_URI = "iglu:io.factotum/factfile/jsonschema/1-0-0"
SNOWPLOW_URI = "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0"
OURS_PATH = os.path.join(REPO, "schemas", "io.factotum", "factfile", "jsonschema", "1-0-0")
SNOWPLOW_PATH = os.path.join(SHARED, "iglu", "com.snowplowanalytics.factotum", "factfile", "jsonschema", "1-0-0")
SELF_DESC_PATH = os.path.join(SHARED, "iglu", "com.snowplowanalytics.self-desc", "schema", "jsonschema", "1-0-0")

passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")
    return ok


def rel(path):
    return os.path.relpath(path, REPO)


def load(path):
    with open(path) as f:
        return json.load(f)


def first_error(validator, doc):
    errs = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if not errs:
        return None
    e = errs[0]
    return f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}"


def summary_and_exit():
    print(f"check-schemas: {passed} checks passed, {failed} failed")
    sys.exit(1 if failed or passed == 0 else 0)


# (a) the schema files themselves
schemas = {}
for uri, path in ((OURS_URI, OURS_PATH), (SNOWPLOW_URI, SNOWPLOW_PATH)):
    try:
        schema = load(path)
    except (OSError, ValueError) as e:
        check(False, f"{rel(path)}: unreadable: {e}")
        continue
    errs = list(jsonschema.Draft4Validator(jsonschema.Draft4Validator.META_SCHEMA).iter_errors(schema))
    if check(not errs, f"{rel(path)}: not a valid draft-04 schema: " + ("" if not errs else
             f"{'/'.join(map(str, jsonschema.exceptions.best_match(errs).absolute_path)) or '(root)'}: "
             f"{jsonschema.exceptions.best_match(errs).message[:200]}")):
        jsonschema.Draft4Validator.check_schema(schema)  # belt and braces: raises if still invalid
        schemas[uri] = schema
if OURS_URI not in schemas or SNOWPLOW_URI not in schemas:
    summary_and_exit()

ours = schemas[OURS_URI]
check(ours.get("$schema") == "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
      f"{rel(OURS_PATH)}: $schema is not Iglu's self-desc meta-schema")
check(ours.get("self") == {"vendor": "io.factotum", "name": "factfile", "format": "jsonschema", "version": "1-0-0"},
      f"{rel(OURS_PATH)}: self is not io.factotum/factfile/jsonschema/1-0-0")
if os.path.exists(SELF_DESC_PATH):
    # The meta-schema is allOf [self-description, draft-04]; draft-04 is checked above.
    for part in load(SELF_DESC_PATH).get("allOf", []):
        if "$ref" not in part:
            err = first_error(jsonschema.Draft4Validator(part), ours)
            check(err is None, f"{rel(OURS_PATH)}: not a self-describing schema: {err}")
check(ours["properties"]["schema"].get("enum") == [OURS_URI],
      f"{rel(OURS_PATH)}: the schema property does not pin {OURS_URI}")

validators = {uri: jsonschema.Draft4Validator(s, format_checker=jsonschema.FormatChecker()) for uri, s in schemas.items()}
OURS, SNOWPLOW = validators[OURS_URI], validators[SNOWPLOW_URI]

# (b) the project's samples, each against the schema it names
samples = sorted(glob.glob(os.path.join(REPO, "samples", "*.factfile")))
check(samples, "no samples/*.factfile found")
for path in samples:
    try:
        doc = load(path)
    except ValueError as e:
        check(False, f"{rel(path)}: invalid JSON: {e}")
        continue
    uri = doc.get("schema") if isinstance(doc, dict) else None
    if not check(uri in validators, f"{rel(path)}: unknown or missing schema {uri!r}"):
        continue
    err = first_error(validators[uri], doc)
    check(err is None, f"{rel(path)}: invalid against {uri}: {err}")
    if uri == SNOWPLOW_URI:  # every Snowplow factfile is also one of ours under our URI
        swapped = dict(doc, schema=OURS_URI)
        err = first_error(OURS, swapped)
        check(err is None, f"{rel(path)}: valid for Snowplow but rejected by ours under {OURS_URI}: {err}")


# (c) ours = Snowplow's document + optional fields
def task(name="t", deps=(), **extra):
    t = {"name": name, "executor": "shell", "command": "echo", "arguments": [name],
         "dependsOn": list(deps), "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}}
    t.update(extra)
    return t


def factfile(uri, tasks, **extra):
    data = {"name": "check", "tasks": tasks}
    data.update(extra)
    return {"schema": uri, "data": data}


def accepts(v, doc):
    return first_error(v, doc) is None


base = factfile(SNOWPLOW_URI, [task("a"), task("b", ["a"])])
check(accepts(SNOWPLOW, base), "a plain Snowplow factfile is rejected by Snowplow's schema")
check(accepts(OURS, dict(base, schema=OURS_URI)), "a plain Snowplow factfile is rejected by ours under our URI")
check(not accepts(OURS, base), "ours accepts a document whose schema is the Snowplow URI")
check(not accepts(OURS, dict(base, schema="iglu:io.factotum/factfile/jsonschema/1-0-1")), "ours accepts another version's URI")

extensions = {
    "task timeout": ({"timeout": 30}, {}),
    "task retry": ({"retry": {"attempts": 3, "delaySeconds": 0.5, "backoff": 2, "maxDelaySeconds": 10, "onReturnCodes": [1, 32767]}}, {}),
    "task continueOnFailure": ({"continueOnFailure": True}, {}),
    "task env": ({"env": {"A": "1", "B": ""}}, {}),
    "task cwd": ({"cwd": "/tmp"}, {}),
    "task constraints": ({"constraints": {"host": "*", "labels": {"zone": "eu"}}}, {}),
    "task onLost": ({"onLost": "retry"}, {}),
    "job tags": ({}, {"tags": {"team": "data"}}),
    "job timeout": ({}, {"timeout": 1}),
    "job placement": ({}, {"placement": "spread"}),
    "job maxParallel": ({}, {"maxParallel": 1}),
}
for what, (task_extra, job_extra) in extensions.items():
    snow = factfile(SNOWPLOW_URI, [task("a", **task_extra)], **job_extra)
    check(not accepts(SNOWPLOW, snow), f"Snowplow's schema accepts an extension field ({what})")
    err = first_error(OURS, dict(snow, schema=OURS_URI))
    check(err is None, f"ours rejects a valid extension field ({what}): {err}")

everything = factfile(OURS_URI, [task("a", **{k: v for t, _ in extensions.values() for k, v in t.items()})],
                      **{k: v for _, j in extensions.values() for k, v in j.items()})
err = first_error(OURS, everything)
check(err is None, f"ours rejects a document using every extension field: {err}")
check(accepts(OURS, factfile(OURS_URI, [task("a", retry={"attempts": 1}, constraints={})])),
      "ours rejects a minimal retry ({attempts: 1}) or empty constraints")

# Snowplow's own samples: same verdict from ours once the URI is swapped (nothing got looser).
shared_samples = sorted(glob.glob(os.path.join(SHARED, "factotum-samples", "**", "*.factfile"), recursive=True))
for path in shared_samples:
    try:
        doc = load(path)
    except ValueError:
        continue  # invalid JSON is a fixture too; nothing to compare
    if not (isinstance(doc, dict) and doc.get("schema") == SNOWPLOW_URI):
        continue
    snow_ok = accepts(SNOWPLOW, doc)
    ours_ok = accepts(OURS, dict(doc, schema=OURS_URI))
    check(snow_ok == ours_ok, f"{path}: Snowplow's schema says {'valid' if snow_ok else 'invalid'}, ours (our URI) disagrees")


# (d) invalid extension documents are rejected by ours (and the base constraints still hold)
def with_task(**extra):
    return factfile(OURS_URI, [task("a", **extra)])


def with_job(**extra):
    return factfile(OURS_URI, [task("a")], **extra)


def without(key):
    t = task("a")
    del t[key]
    return factfile(OURS_URI, [t])


invalid = {
    "retry without attempts": with_task(retry={"delaySeconds": 1}),
    "retry attempts 0": with_task(retry={"attempts": 0}),
    "retry attempts not an integer": with_task(retry={"attempts": 1.5}),
    "retry negative delaySeconds": with_task(retry={"attempts": 2, "delaySeconds": -1}),
    "retry backoff below 1": with_task(retry={"attempts": 2, "backoff": 0.5}),
    "retry negative maxDelaySeconds": with_task(retry={"attempts": 2, "maxDelaySeconds": -0.1}),
    "retry onReturnCodes out of range": with_task(retry={"attempts": 2, "onReturnCodes": [32768]}),
    "retry onReturnCodes negative": with_task(retry={"attempts": 2, "onReturnCodes": [-1]}),
    "retry unknown field": with_task(retry={"attempts": 2, "jitter": True}),
    "onLost \"maybe\"": with_task(onLost="maybe"),
    "task timeout 0": with_task(timeout=0),
    "task timeout as a string": with_task(timeout="30"),
    "continueOnFailure as a string": with_task(continueOnFailure="true"),
    "env with a number value": with_task(env={"A": 1}),
    "env as an array": with_task(env=["A=1"]),
    "empty cwd": with_task(cwd=""),
    "constraints empty host": with_task(constraints={"host": ""}),
    "constraints label with a number value": with_task(constraints={"labels": {"zone": 1}}),
    "constraints unknown field": with_task(constraints={"slots": 2}),
    "unknown task field": with_task(priority=1),
    "maxParallel 0": with_job(maxParallel=0),
    "job timeout 0": with_job(timeout=0),
    "placement \"random\"": with_job(placement="random"),
    "tags with a number value": with_job(tags={"n": 1}),
    "unknown job field": with_job(owner="me"),
    "task without onResult": without("onResult"),
    "task without arguments": without("arguments"),
    "onResult code out of range": with_task(onResult={"terminateJobWithSuccess": [], "continueJob": [40000]}),
    "onResult without continueJob": with_task(onResult={"terminateJobWithSuccess": []}),
    "job without name": {"schema": OURS_URI, "data": {"tasks": []}},
    "document without data": {"schema": OURS_URI},
    "unknown top-level field": dict(with_job(), extra=1),
}
for what, doc in invalid.items():
    check(not accepts(OURS, copy.deepcopy(doc)), f"ours accepts an invalid document ({what})")

summary_and_exit()
