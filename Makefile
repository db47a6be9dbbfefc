# Every target installs what it needs into .venv first (torch is pinned to the CPU build on disk).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install format-tools run test reliability dev lint bench bench-large bench-empty bench-sensor bench-checks bench-backends bench-service recall recall-formats stop screenshot validate

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# OCR of scans and images runs Debian's tesseract with its English data: installed with apt when it is missing.
install: $(STAMP)
	@tesseract --list-langs 2>/dev/null | grep -qx eng || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng; }

# The per-format benchmarks write their documents with pandoc and LibreOffice headless: installed with apt when missing.
format-tools:
	@command -v pandoc >/dev/null && command -v soffice >/dev/null && \
		test -e /usr/lib/libreoffice/program/libsclo.so -a -e /usr/lib/libreoffice/program/libsdlo.so || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pandoc \
		libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui; }

run: install  ## ingest the bundled sample corpus for two tenants and show search results
	$(VENV)/bin/ingest-pipeline demo

test: install  ## the test suite, against real Postgres, CyborgDB (embedded and service) and the model
	test -x /usr/bin/chromium || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }
	$(PY) -m pytest -q --durations=15 --ignore=ingest_pipeline_tests/reliability

reliability: install  ## the fault matrix, races, disk full and hostile input: a summary table and reliability-report.json
	$(PY) -m pytest -q ingest_pipeline_tests/reliability

dev: install  ## the Dagster UI on the same instance and state
	$(VENV)/bin/ingest-pipeline dev

lint: install
	$(VENV)/bin/ruff check .

bench: install format-tools  ## end to end vs. the bare model at 500 and 2,000 chunks, re-runs, search latency, upserts, recall at 100k, extraction per format: a table and bench-report.json
	$(PY) benchmarks/bench.py

bench-large: install format-tools  ## the same with 8,000 chunks too (about 35 minutes on 2 cores)
	$(PY) benchmarks/bench.py --sizes 500,2000,8000

bench-empty: install  ## a backfill over partitions with no pending work: ms per partition, no model load
	$(PY) benchmarks/empty_partitions.py

bench-sensor: install  ## one upload-sensor tick over 200 tenants x 1,000 files: nothing changed, one new file, the old full walk
	$(PY) benchmarks/sensor_tick.py

bench-checks: install  ## the two index checks on a tenant of 200,000 synthetic chunks (no model), before and after: s and peak RSS
	$(PY) benchmarks/checks_at_scale.py

bench-service: install  ## the search service under HTTP load on 100,000 vectors: p50/p99, 1-64 clients, a soak's RSS
	$(PY) benchmarks/service_load.py $(if $(SOAK_S),--soak-s $(SOAK_S))

bench-backends: install  ## the int8 ONNX backend against bare PyTorch: chunks/s and answer-in-top-5, side by side
	$(PY) benchmarks/embedding_backends.py

validate: install  ## dagster definitions validate and dg check defs, on this installation's instance (no eval needed)
	$(VENV)/bin/dagster definitions validate -w workspace.yaml
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/dg check defs

recall: install  ## encrypted-index recall vs exact search; answer-in-top-5 and latency of vector, keyword and hybrid (several alphas) on two QA sets
	$(PY) benchmarks/retrieval_quality.py

recall-formats: install format-tools  ## answer-in-top-5 / top-1 per document format (pandoc, LibreOffice, e-mail, OCRed scans) against plain text
	$(PY) benchmarks/format_retrieval.py

screenshot: install  ## headless-Chromium screenshots of the asset graph and an asset's page, into docs/screenshots
	test -x /usr/bin/chromium || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }
	$(PY) benchmarks/screenshots.py

stop: install  ## stop the embedded PostgreSQL server of INGEST_HOME
	$(VENV)/bin/ingest-pipeline stop-postgres
