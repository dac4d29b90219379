# moepack — make demo (the main job on the bundled checkpoint), make test.
SWIFT ?= swift
# A Python with torch, numpy, h5py and safetensors (only for regenerating fixtures; moepack never calls Python).
PYTHON ?= $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)
# Debian packages: the system-library targets' and the tools the tests build and run the host programs
# with (gcc, the aarch64 cross compiler, python3-numpy for the PYNQ host); the tests add chromium, whose
# headless DOM checks the report page (about 280 MB installed, so `make demo` does not ask for it).
DEB_PACKAGES := zlib1g-dev libssl-dev libopenblas-dev libhdf5-dev libpng-dev pkg-config gcc make gcc-aarch64-linux-gnu python3-numpy
TEST_DEB_PACKAGES := $(DEB_PACKAGES) chromium
BIN := .build/release/moepack
CKPT := models/m3vit-tiny-edge-moe.pth
FRAME := models/demo-frame.png
OUT := packed/edge-moe-zcu102

.PHONY: deps test-deps build release demo test bench fixtures fuzz clean

# Installs the Debian packages of its argument that are missing, as root with apt-get, else with sudo.
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PACKAGES))

test-deps:
	$(call install_missing,$(TEST_DEB_PACKAGES))

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product moepack

demo: release
	$(BIN) pack $(CKPT) -o $(OUT) --task all --image $(FRAME) --report packed/report.html --heads $(CKPT)
	$(BIN) run $(OUT) --image $(FRAME) -o packed/demo-output.npy
	$(BIN) run $(OUT) --image $(FRAME) --heads $(CKPT) -o packed/demo-tasks
	$(BIN) run $(OUT) --image $(FRAME) --heads $(CKPT) --mode fixed -o packed/demo-tasks-fixed
	$(BIN) verify $(OUT) --checkpoint $(CKPT) --image $(FRAME) --heads $(CKPT)
	$(BIN) verify $(OUT) --checkpoint $(CKPT) --image $(FRAME) --mode fixed --heads $(CKPT)

# Test cases run in parallel processes: one more than the cores, because the board tests spend
# seconds asleep waiting for a simulated board's timeout while the others need the CPU.
TEST_WORKERS := $(shell echo $$(( $$(nproc) + 1 )))
test: test-deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --disable-swift-testing --parallel --num-workers $(TEST_WORKERS)

bench: release
	bash bench/run.sh

# Regenerates the committed fixtures and the bundled checkpoint (seeded, byte-identical on re-run).
fixtures:
	$(PYTHON) scripts/make_fixtures.py
	$(PYTHON) scripts/make_heads_reference.py
	$(PYTHON) scripts/make_numpy_value_fixtures.py
	$(PYTHON) scripts/make_digest_fixture.py
	$(PYTHON) scripts/make_checkpoint_fixtures.py
	$(PYTHON) scripts/make_format_fixtures.py
	$(PYTHON) scripts/make_frame_fixtures.py
	$(PYTHON) scripts/make_fixedpoint_reference.py
	$(PYTHON) scripts/make_hostile_fixtures.py
	$(PYTHON) Tests/Fixtures/emulation/make_emulation_ref.py
	$(PYTHON) scripts/make_precision_fixtures.py
	$(PYTHON) scripts/make_attention_fixture.py

fuzz:
	bash fuzz/run.sh

clean:
	rm -rf .build packed/edge-moe-zcu102 packed/demo-output.npy packed/demo-tasks packed/demo-tasks-fixed
