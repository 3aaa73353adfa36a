"""Factfiles the API tests submit, as JSON text."""

import json

SCHEMA = "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0"


def task(name, command, *args, depends_on=(), continue_job=(0,)):
    return {
        "name": name,
        "executor": "shell",
        "command": command,
        "arguments": list(args),
        "dependsOn": list(depends_on),
        "onResult": {"terminateJobWithSuccess": [], "continueJob": list(continue_job)},
    }


def factfile(name, *tasks):
    return json.dumps({"schema": SCHEMA, "data": {"name": name, "tasks": list(tasks)}})


def one_task(name, command, *args):
    return factfile(name, task("only", command, *args))
