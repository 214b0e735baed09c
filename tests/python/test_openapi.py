"""The OpenAPI document of the native API (docs/openapi.json) against a real validator and
against the examples the project shows its readers.

- The document is a valid OpenAPI 3.1 document (``openapi_spec_validator.validate``).
- The README's API tour (the ``sh`` blocks of its "## API tour" section) and the
  ``console`` blocks of docs/api.md are read by one stable rule:

  * every ``curl`` command (several may share a line, split at ``;`` and ``&``) is a
    request: its method is ``-X`` (else GET), its path what follows ``$B``, its body the
    ``-d`` argument, its headers the ``-H`` ones. ``$T`` stands for a ticket and ``<id>``
    for an outbox id. It maps to the operation whose path template and method match; a
    route the document declares omitted (``x-leasehold-omitted``) is skipped, anything
    else unmatched fails. The body must validate against the operation's request body,
    each query parameter and header (other than the API key) must be one the operation
    declares, with a valid value;
  * in the README, a comment line ``# {...}`` right under a command line is the answer of
    that line's last command; in docs/api.md, the lines under a ``$ curl`` line up to the
    next ``$`` are its answer (with ``curl -i``, a status line and headers first; with
    ``curl -N``, Server-Sent Events). An answer must be whole JSON and validate against
    exactly one of the operation's documented answers (the status, when shown, must be
    that one); each event's ``data`` must validate against the schema the stream's
    ``x-leasehold-events`` names for it. An answer with ``…`` in it is an abbreviation and
    is counted, not checked.

OpenAPI 3.1 schemas are JSON Schema 2020-12: they are checked with ``jsonschema``, with the
document as the one resource its ``$ref`` resolve in.
"""

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[2]
DOC = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
DOC_URI = "urn:leasehold:openapi"
REGISTRY = Registry().with_resource(DOC_URI, Resource.from_contents(DOC, default_specification=DRAFT202012))

# What the examples' shell variables and placeholders stand for.
SAMPLE_TICKET = "Hx3Rk9TmbZqL0vWc2NfY8g"
SAMPLE_OUTBOX_ID = "01M8G0XYRGSKTEVTN8X9Y82N66"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
CREDENTIALS = {"x-api-key", "authorization"}


def pointer(*parts):
    """A JSON pointer to the document's part at ``parts``."""
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def at(ptr):
    node = DOC
    for part in ptr.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def resolved(ptr):
    """Follows a ``$ref`` (to another part of the document) until none is left."""
    while "$ref" in at(ptr):
        ptr = at(ptr)["$ref"].lstrip("#")
    return ptr


def errors(schema_ptr, value):
    """Why ``value`` does not validate against the schema at ``schema_ptr`` (empty: it does)."""
    validator = jsonschema.Draft202012Validator({"$ref": f"{DOC_URI}#{schema_ptr}"}, registry=REGISTRY)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


def template_regex(template):
    return re.compile("^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template)) + "$")


def operation(method, path):
    """(path template, method) of the document's operation for a request, or None."""
    for template in DOC["paths"]:
        if template_regex(template).match(path) and method in DOC["paths"][template]:
            return template, method
    return None


def omitted(method, path):
    return any(
        template_regex(entry["path"]).match(path) and entry["method"].lower() in ("*", method)
        for entry in DOC["x-leasehold-omitted"]
    )


def op_parameters(template, method):
    """{(in, lower-case name): pointer to the parameter} of an operation."""
    out = {}
    for base in (pointer("paths", template), pointer("paths", template, method)):
        for i, _ in enumerate(at(base).get("parameters", [])):
            ptr = resolved(f"{base}/parameters/{i}")
            p = at(ptr)
            out[(p["in"], p["name"].lower())] = ptr
    return out


class Request:
    """One ``curl`` command of an example."""

    def __init__(self, where, argv):
        self.where = where
        self.method, self.target, self.body, self.headers, self.include, self.answer = "get", None, None, [], False, []
        args = iter(argv[1:])
        for arg in args:
            if arg == "-X":
                self.method = next(args).lower()
            elif arg in ("-d", "--data"):
                self.body = next(args)
            elif arg == "-H":
                name, _, value = next(args).partition(":")
                self.headers.append((name.strip().lower(), value.strip()))
            elif arg.startswith("-") and not arg.startswith("--"):
                self.include |= "i" in arg
            elif "$B" in arg:
                self.target = arg.split("$B", 1)[1]
        assert self.target, f"{where}: no $B URL in {argv}"
        self.path, _, self.query = self.target.partition("?")
        self.path = self.path.replace("$T", SAMPLE_TICKET).replace("<id>", SAMPLE_OUTBOX_ID)

    def __repr__(self):
        return f"{self.where}: {self.method.upper()} {self.target}"


def commands(line, where):
    """The ``curl`` commands of one shell line."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words, out = [], []
    for token in list(lexer) + [";"]:
        if token and set(token) <= set(";&|"):
            if words and words[0] == "curl":
                out.append(Request(where, words))
            words = []
        else:
            words.append(token)
    return out


def fenced(text, lang):
    """(line number of the opening fence, lines inside) of every ``lang`` block of ``text``."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            opening = i + 1
            i += 1
            while lines[i].strip() != "```":
                i += 1
            blocks.append((opening, lines[opening:i]))
        i += 1
    return blocks


def readme_requests():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index("## API tour")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    requests = []
    for first, block in fenced(text, "sh"):
        if not start < first <= end:
            continue
        last_line = []
        for n, line in enumerate(block, first + 1):
            stripped = line.strip()
            if stripped.startswith("# {"):
                assert last_line, f"README.md:{n}: an answer under no command"
                last_line[-1].answer.append(stripped[2:])
                last_line = []  # One answer per command line.
            elif stripped.startswith("#") or not stripped:
                last_line = []
            else:
                last_line = commands(stripped, f"README.md:{n}")
                requests.extend(last_line)
    return requests


def api_md_requests():
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    requests = []
    for first, lines in fenced(text, "console"):
        current = None
        for n, line in enumerate(lines, first + 1):
            if line.startswith("$ "):
                found = commands(line[2:], f"docs/api.md:{n}")
                current = found[-1] if found else None
                requests.extend(found)
            elif current is not None:
                current.answer.append(line)
    return requests


REQUESTS = readme_requests() + api_md_requests()


def test_the_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1.")
    validate(DOC)


def test_the_examples_are_found():
    # A floor, so that a change of the rule or of the examples cannot check nothing.
    readme = [r for r in REQUESTS if r.where.startswith("README")]
    assert len(readme) >= 25, readme
    assert sum(bool(r.answer) for r in readme) >= 8
    assert sum(bool(r.answer) for r in REQUESTS) >= 20


@pytest.mark.parametrize("request_", REQUESTS, ids=repr)
def test_example_request_matches_its_operation(request_):
    r = request_
    found = operation(r.method, r.path)
    if found is None:
        assert omitted(r.method, r.path), f"{r}: no such operation in docs/openapi.json"
        pytest.skip("a route the document omits")
    template, method = found
    op_ptr = pointer("paths", template, method)
    op = at(op_ptr)
    params = op_parameters(template, method)
    # The body.
    if "requestBody" in op:
        body_ptr = resolved(f"{op_ptr}/requestBody")
        if r.body is None:
            assert not at(body_ptr).get("required"), f"{r}: the operation needs a body"
        else:
            body = json.loads(r.body.replace("$T", SAMPLE_TICKET))
            problems = errors(f"{body_ptr}/content/application~1json/schema", body)
            assert not problems, f"{r}: body {body}: {problems}"
    else:
        assert r.body is None, f"{r}: a body for an operation that takes none"
    # Query parameters and headers.
    given = {pair.partition("=")[0].lower() for pair in r.query.split("&") if pair}
    for (where, name), ptr in params.items():
        if where == "query" and at(ptr).get("required"):
            assert name in given, f"{r}: the query parameter {name} is required"
    for pair in filter(None, r.query.split("&")):
        name, _, value = pair.partition("=")
        ptr = params.get(("query", name.lower()))
        assert ptr, f"{r}: query parameter {name} is not declared"
        value = value.replace("$T", SAMPLE_TICKET)
        if at(ptr)["schema"].get("type") == "integer":
            value = int(value)
        problems = errors(f"{ptr}/schema", value)
        assert not problems, f"{r}: {name}={value}: {problems}"
    for name, value in r.headers:
        if name in CREDENTIALS:
            continue
        ptr = params.get(("header", name))
        assert ptr, f"{r}: header {name} is not declared"
        problems = errors(f"{ptr}/schema", value.replace("$T", SAMPLE_TICKET))
        assert not problems, f"{r}: {name}: {problems}"
    if r.answer:
        check_answer(r, op_ptr)


def check_answer(r, op_ptr):
    lines = list(r.answer)
    status = None
    if r.include:
        status = int(lines[0].split()[1])
        end = lines.index("")
        lines = lines[end + 1 :]
    text = "\n".join(lines).strip()
    if "…" in text:
        return  # An abbreviation: counted, not checked.
    responses = at(op_ptr)["responses"]
    if text.startswith("id:"):
        check_events(r, op_ptr, text)
        return
    if not text:
        assert status is not None and str(status) in responses, f"{r}: status {status} is not documented"
        return
    value = json.loads(text)
    matches, why = [], {}
    for code in responses:
        if code == "default":
            continue
        ptr = resolved(f"{op_ptr}/responses/{code}")
        if "application/json" in at(ptr).get("content", {}):
            why[code] = errors(f"{ptr}/content/application~1json/schema", value)
            if not why[code]:
                matches.append(int(code))
    assert len(matches) == 1, f"{r}: the answer {value} matches the documented answers {matches}, not exactly one: {why}"
    assert status in (None, matches[0]), f"{r}: shown with {status}, documented as {matches[0]}"


def check_events(r, op_ptr, text):
    ptr = resolved(f"{op_ptr}/responses/200")
    events = at(ptr)["content"]["text/event-stream"]["x-leasehold-events"]
    seen = 0
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        name = fields["event"]
        assert name in events, f"{r}: event {name} is not documented"
        schema_ptr = resolved(f"{ptr}/content/text~1event-stream/x-leasehold-events/{name}")
        problems = errors(schema_ptr, json.loads(fields["data"]))
        assert not problems, f"{r}: event {name}: {problems}"
        seen += 1
    assert seen
