# Two commands do all set-up: `make book` and `make test`.
# Each creates and fills .venv itself. A stamp file named after the hash of
# pyproject.toml + constraints.txt makes the next run skip the install.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HASH   := $(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-16)
STAMP  := $(VENV)/.installed-$(HASH)
JOBS   ?= 2
JB     := $(BIN)/jupyter-book build . -W -n --keep-going
# One torch thread per process on small CPU machines: with torch's default OpenMP threads,
# the chapters' small models ran 10x slower here (07_pcontext: 608 s vs 55 s; a training
# run: 8.5 min vs 35 s), whether or not other processes shared the cores.
THREAD_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: help venv chromium book test lint unit notebooks book-check site-check mutants clean

help:
	@echo "make book   build the site into _build/html, executing every chapter"
	@echo "make test   ruff, unit tests, every chapter under nbval, a build check of the site"
	@echo "make mutants  one-line bugs put into a copy of the library: does the suite catch each?"

venv: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[book,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# Debian's Chromium for the browser check of the site; installed when missing
# and apt is usable, otherwise that check is skipped with its reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing chromium (apt) for the site check"; \
			apt-get update -qq >/dev/null 2>&1; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				chromium >/dev/null 2>&1 || echo "apt could not install chromium: site check skipped"; \
		else echo "no chromium and no usable apt: the site check will be skipped"; fi; }

book: $(STAMP) chromium
	$(THREAD_ENV) $(JB) --all
	ENCNET_SITE=_build/html $(BIN)/python -m pytest -q -p no:cacheprovider -m site tests/test_site.py
	@echo "The site is at file://$(CURDIR)/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(THREAD_ENV) $(BIN)/python -m pytest -p no:cacheprovider -n $(JOBS) -m "not site" tests

# The tests marked `numerics` (floats computed in different orders: DDP and one process,
# windows and one pass, resume and one run) again on other kernels: oneDNN and ATen pick theirs
# by CPU, so a comparison that holds only on this machine's kernels fails here too.
NUMERICS_ENV := ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default
.PHONY: numerics
numerics: $(STAMP)
	$(THREAD_ENV) $(NUMERICS_ENV) $(BIN)/python -m pytest -p no:cacheprovider -n $(JOBS) \
		-m numerics tests

# Every chapter, top to bottom, in quick mode; a failing cell fails the run.
notebooks: $(STAMP)
	$(THREAD_ENV) ENCNET_MODE=quick $(BIN)/python -m pytest -p no:cacheprovider --nbval-lax \
		--nbval-current-env -n $(JOBS) --dist loadscope book

# The site without executing the chapters: a broken toc entry, link or
# cross-reference fails here, in seconds. Figures are numbered from the outputs of
# executed cells, so only here a {numref} to a figure has no target: those references
# are checked by `make book`, which executes every chapter.
book-check: $(STAMP)
	@mkdir -p _build
	$(BIN)/python -c "import os, yaml; c = yaml.safe_load(open('_config.yml')); \
		c['execute']['execute_notebooks'] = 'off'; \
		cfg = c['sphinx']['config']; \
		cfg['suppress_warnings'] = cfg.get('suppress_warnings', []) + ['ref.numref']; \
		ext = c['sphinx'].get('local_extensions') or {}; \
		c['sphinx']['local_extensions'] = {k: os.path.abspath(v) for k, v in ext.items()}; \
		yaml.safe_dump(c, open('_build/_config_noexec.yml', 'w'))"
	$(JB) --all --config _build/_config_noexec.yml --path-output _build/check

site-check: $(STAMP) chromium
	ENCNET_SITE=_build/check/_build/html $(BIN)/python -m pytest -p no:cacheprovider -m site tests/test_site.py

test: lint book-check site-check unit numerics notebooks

# Not part of `make test`: each mutant runs the test files that guard it (about 1.5 min).
mutants: $(STAMP)
	$(THREAD_ENV) $(BIN)/python tests/mutants.py

clean:
	rm -rf _build .pytest_cache
