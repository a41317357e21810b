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

.PHONY: help venv book test lint unit notebooks book-check clean

help:
	@echo "make book   build the site into _build/html, executing every chapter"
	@echo "make test   ruff, unit tests, every chapter under nbval, a build check of the site"

venv: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[book,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

book: $(STAMP)
	$(JB) --all
	@echo "The site is at file://$(CURDIR)/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) tests

# Every chapter, top to bottom, in quick mode; a failing cell fails the run.
notebooks: $(STAMP)
	ENCNET_MODE=quick $(BIN)/python -m pytest -p no:cacheprovider --nbval-lax \
		--nbval-current-env -n $(JOBS) --dist loadscope book

# The site without executing the chapters: a broken toc entry, link or
# cross-reference fails here, in seconds.
book-check: $(STAMP)
	@mkdir -p _build
	$(BIN)/python -c "import yaml; c = yaml.safe_load(open('_config.yml')); \
		c['execute']['execute_notebooks'] = 'off'; \
		yaml.safe_dump(c, open('_build/_config_noexec.yml', 'w'))"
	$(JB) --all --config _build/_config_noexec.yml --path-output _build/check

test: lint unit notebooks book-check

clean:
	rm -rf _build .pytest_cache
