"""test_openapi.py - openapi.yaml checked on its own, without a daemon.

The document is the API contract test_api.py validates the daemon against,
so it must itself be sound: a 3.1 document whose every $ref resolves, whose
schemas are valid JSON Schema 2020-12 and strict where the contract says so,
whose examples validate against their schemas and obey the classify
invariants, and whose error codes and statuses are exactly those of
src/err.c (the codes) and src/http.c (the statuses).

What it does not do: talk to a daemon (test_api.py).
"""
import copy
import re

import jsonschema
import pytest

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def walk(node, path=()):
    """Yields (path, dict) for every mapping in the document."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def deref(api, node):
    while isinstance(node, dict) and "$ref" in node:
        _, node = api.resolver.resolve(node["$ref"])
    return node


def operations(api):
    for route, item in api.doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield route, method, op


def responses(api):
    for route, method, op in operations(api):
        for status, resp in op["responses"].items():
            yield route, method, status, deref(api, resp)


@pytest.fixture(scope="module")
def err_c(source_dir):
    """{code: http status} of every error a client can get: each kind's code
    as src/err.c names it, its status as src/http.c (the HTTP edge) maps
    it. A kind mapped to 500 reaches a client as "internal" (a setting's or
    a server file's error is never the client's doing)."""
    text = (source_dir / "src" / "err.c").read_text()
    codes = dict(re.findall(r'case (GR_\w+): return "(\w+)";',
                            text[text.index("gr_status_code"):]))
    http = (source_dir / "src" / "http.c").read_text()
    http_fn = http[http.index("static int http_status"):]
    http_fn = http_fn[:http_fn.index("\n}\n")]
    https = {k: int(v) for k, v in re.findall(r"case (GR_\w+): return (\d+);", http_fn)}
    assert codes and codes.keys() == https.keys(), "src/err.c or src/http.c no longer parse as expected"
    return {codes[k] if https[k] != 500 else "internal": https[k] for k in codes if k != "GR_OK"}


def test_is_openapi_31(api):
    # That the paths are exactly the routes genred serves is
    # tests/test_routes.c's check, against src/routes.c's table.
    assert str(api.doc["openapi"]).startswith("3.1.")
    assert api.paths("post") == ["/v1/classify"]


def test_every_ref_resolves(api):
    refs = [(p, n["$ref"]) for p, n in walk(api.doc) if isinstance(n.get("$ref"), str)]
    assert len(refs) > 20
    for path, ref in refs:
        assert ref.startswith("#/"), f"{path}: external $ref {ref}"
        api.resolver.resolve(ref)  # raises RefResolutionError


def test_schemas_are_valid_2020_12(api):
    for name, schema in api.doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
        for example in schema.get("examples", []):
            api.validate(example, name)


def test_every_example_validates(api, check_classify):
    checked = 0
    for route, method, status, resp in responses(api):
        for mtype, media in resp.get("content", {}).items():
            if mtype != "application/json":
                continue
            for ex_name, ex in media.get("examples", {}).items():
                api.validate(ex["value"], media["schema"])
                if route == "/v1/classify" and status == "200":
                    check_classify(ex["value"])
                checked += 1
    assert checked >= 10


def test_error_codes_match_err_c(api, err_c):
    enum = api.schema("Error")["properties"]["error"]["properties"]["code"]["enum"]
    assert sorted(enum) == sorted(err_c)
    for route, method, status, resp in responses(api):
        media = resp.get("content", {}).get("application/json")
        if not media or deref(api, media["schema"]) != api.schema("Error"):
            continue
        for ex in media.get("examples", {}).values():
            code = ex["value"]["error"]["code"]
            assert err_c[code] == int(status), f"{method} {route} {status}: example code {code}"
    for name in ("BadRequest", "Unauthorized", "NotFound", "MethodNotAllowed",
                 "RequestTimeout", "PayloadTooLarge", "UriTooLong", "UnsupportedMedia",
                 "UnprocessableAudio", "NotImplemented", "Busy", "Internal"):
        for ex in api.doc["components"]["responses"][name]["content"]["application/json"][
                "examples"].values():
            assert ex["value"]["error"]["code"] in err_c


def test_json_responses_carry_request_id_and_503_retry_after(api):
    for route, method, status, resp in responses(api):
        if "application/json" in resp.get("content", {}):
            assert "X-Request-Id" in resp.get("headers", {}), f"{method} {route} {status}"
        if status == "503":
            assert "Retry-After" in resp.get("headers", {}), f"{method} {route} 503"
    assert "Allow" in api.doc["components"]["responses"]["MethodNotAllowed"]["headers"]


def test_access_and_overload_are_documented(api):
    """API keys: every route answers 401 except the health probes and the
    public documents (web page, API contract), which need no credentials;
    401 carries WWW-Authenticate. Overload: every route but /healthz may
    answer 503 (connection limit)."""
    scheme = api.doc["components"]["securitySchemes"]["bearerKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert {} in api.doc["security"] and {"bearerKey": []} in api.doc["security"]
    unauthorized = api.doc["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    public = set(api.paths("get", public=True))
    assert {"/healthz", "/readyz"} <= public and not public & {"/v1/model", "/metrics"}
    for route, method, op in operations(api):
        statuses = set(op["responses"])
        if route in public:
            assert "401" not in statuses, route
        else:
            assert "security" not in op, f"{route} overrides the global security"
            assert "401" in statuses, f"{method} {route}: no 401"
        if route != "/healthz":
            assert "503" in statuses, f"{method} {route}: no 503"
    busy = api.doc["components"]["responses"]["Busy"]["content"]["application/json"]
    codes = {ex["value"]["error"]["code"] for ex in busy["examples"].values()}
    assert codes == {"busy", "deadline_exceeded"}


def test_classify_parameters(api):
    op = api.doc["paths"]["/v1/classify"]["post"]
    params = {p["name"]: p for p in (deref(api, p) for p in op["parameters"])}
    assert params["trim"]["schema"] == {"type": "integer", "enum": [0, 1], "default": 1}
    assert params["segments"]["schema"] == {"type": "integer", "enum": [0, 1], "default": 0}
    assert params["mel"]["schema"] == {"type": "integer", "enum": [0, 1], "default": 0}
    body = op["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["file"]
    assert {"multipart/form-data", "audio/mpeg", "audio/wav", "audio/x-wav", "audio/flac",
            "audio/ogg", "audio/mp4", "audio/aiff", "application/octet-stream"} <= set(body)
    assert all(t == "multipart/form-data" or t.startswith(("audio/", "application/"))
               for t in body)


def first_example(api):
    media = api.doc["paths"]["/v1/classify"]["post"]["responses"]["200"]["content"][
        "application/json"]
    return copy.deepcopy(media["examples"]["segments"]["value"])


MEL = {"bands": 2, "frames": 3, "min_db": -62.5, "max_db": 17.5, "data": "AIDA/xBA"}

MUTATIONS = {
    "extra top-level field": lambda a: a.update(extra=1),
    "missing top": lambda a: a.pop("top"),
    "missing timing": lambda a: a.pop("timing_ms"),
    "probability above 1": lambda a: a["genres"][0].update(probability=1.5),
    "percent above 100": lambda a: a["genres"][0].update(percent=101),
    "extra genre field": lambda a: a["genres"][0].update(rank=1),
    "four in top3": lambda a: a["top3"].append(a["genres"][3]),
    "chunks zero": lambda a: a.update(chunks=0),
    "chunks float": lambda a: a.update(chunks=3.5),
    "trimmed as string": lambda a: a["analyzed"].update(trimmed="no"),
    "extra analyzed field": lambda a: a["analyzed"].update(frames=3),
    "segment probability string": lambda a: a["segments"][0]["probabilities"].update(blues="x"),
    "extra segment field": lambda a: a["segments"][0].update(note=""),
    "model without version": lambda a: a["model"].pop("version"),
    "mel not base64": lambda a: a.update(mel=dict(MEL, data="AI*A/xBA")),
    "mel over 64 bands": lambda a: a.update(mel=dict(MEL, bands=65)),
    "mel without max_db": lambda a: a.update(mel={k: v for k, v in MEL.items() if k != "max_db"}),
    "extra mel field": lambda a: a.update(mel=dict(MEL, scale="db")),
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=list(MUTATIONS))
def test_classify_schema_is_strict(api, mutation):
    answer = first_example(api)
    api.validate(answer, "ClassifyResult")
    MUTATIONS[mutation](answer)
    assert api.errors(answer, "ClassifyResult"), f"schema accepts: {mutation}"


@pytest.mark.parametrize("bad", [
    {"error": {"code": "busy"}},
    {"error": {"code": "teapot", "message": "no"}},
    {"error": {"code": "busy", "message": "full", "retry": 1}},
    {"error": {"code": "busy", "message": "full"}, "status": 503},
    {"code": "busy", "message": "full"},
], ids=["no-message", "unknown-code", "extra-inner", "extra-outer", "flat"])
def test_error_schema_is_strict(api, bad):
    assert api.errors(bad, "Error")


def test_classify_invariants_catch_inconsistent_answers(api, check_classify):
    """The invariants test_api.py relies on must reject what the schema
    alone accepts."""
    bad = []
    a = first_example(api)
    a["top"] = a["genres"][1]["genre"]
    bad.append(a)
    a = first_example(api)
    a["genres"][0], a["genres"][1] = a["genres"][1], a["genres"][0]
    bad.append(a)
    a = first_example(api)
    a["genres"][0]["percent"] = 60.0
    a["top3"][0]["percent"] = 60.0
    bad.append(a)
    a = first_example(api)
    a["analyzed"]["end_s"] = 9.5
    bad.append(a)
    a = first_example(api)
    a["segments"][1]["start_s"] = 4.0
    bad.append(a)
    a = first_example(api)
    a["segments"].pop()
    bad.append(a)
    a = first_example(api)
    a["segments"][1]["top"] = "blues"
    bad.append(a)
    for answer in bad:
        api.validate(answer, "ClassifyResult")
        with pytest.raises(AssertionError):
            check_classify(answer)
