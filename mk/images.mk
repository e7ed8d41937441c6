# The two images, built from operator/Dockerfile and trainer-image/Dockerfile (context: the repository root,
# trimmed by .dockerignore) and tagged with the chart's appVersion, so that the chart's defaults name them.
#
#   make images                         build both (docker when its daemon answers, else buildah)
#   make push REGISTRY=registry.example.com/platform    build, push, print the digests for the chart
#   make test-images                    build, then start both for real (tests/images, marker `images`)
#
# With buildah, images live in $(IMAGES_DIR) (git-ignored), never in system folders; when no registry can be
# reached the base image is made locally from Debian (tests/images/local_base.sh says how it differs from
# the official python:3.11.14-slim-bookworm) and `make push` refuses such images.
.PHONY: images image-base image-operator image-runtime push test-images images-prune images-clean image-tools

REGISTRY ?= ghcr.io/peft-operator
IMAGE_VERSION := $(shell awk '/^appVersion:/ {gsub(/["\047]/, "", $$2); print $$2}' charts/peft-operator/Chart.yaml)
IMAGE_TAG ?= $(IMAGE_VERSION)
OPERATOR_IMAGE ?= $(REGISTRY)/operator:$(IMAGE_TAG)
RUNTIME_IMAGE ?= $(REGISTRY)/runtime:$(IMAGE_TAG)
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_SOURCE ?= https://github.com/peft-operator/peft-operator
IMAGES_DIR ?= $(CURDIR)/.images
# docker when a daemon answers, else buildah (+ podman for the tests); override with IMAGE_TOOL=buildah.
IMAGE_TOOL ?= $(shell if docker info >/dev/null 2>&1; then echo docker; elif command -v buildah >/dev/null; then echo buildah; else echo none; fi)
# Extra flags for `buildah push` / `docker push`, e.g. PUSH_FLAGS=--tls-verify=false for a test registry.
PUSH_FLAGS ?=

BUILDAH := buildah --root $(IMAGES_DIR)/storage --runroot $(IMAGES_DIR)/run --storage-driver overlay
# The Dockerfiles turn these build args into OCI labels. The same labels again as --label, because buildah 1.28
# reuses a cached LABEL step whatever the build args' values (a new commit kept the old revision label);
# --label adds a last step whose cache key is the value itself.
IMAGE_BUILD_ARGS := --build-arg VERSION=$(IMAGE_TAG) --build-arg REVISION=$(IMAGE_REVISION) \
	--build-arg SOURCE=$(IMAGE_SOURCE) \
	--label org.opencontainers.image.version=$(IMAGE_TAG) \
	--label org.opencontainers.image.revision=$(IMAGE_REVISION) \
	--label org.opencontainers.image.source=$(IMAGE_SOURCE)

ifeq ($(IMAGE_TOOL),docker)
BUILD_IMAGE = docker build $(IMAGE_BUILD_ARGS)
else ifeq ($(IMAGE_TOOL),buildah)
# chroot isolation: runs as root on hosts where crun cannot set up cgroups; --pull=never: image-base provides it.
BUILD_IMAGE = TMPDIR=$(IMAGES_DIR)/tmp $(BUILDAH) build --pull=never --layers --isolation chroot $(IMAGE_BUILD_ARGS)
endif

images: image-operator image-runtime
ifeq ($(IMAGE_TOOL),buildah)
	@for image in $(OPERATOR_IMAGE) $(RUNTIME_IMAGE); do \
	  $(BUILDAH) images --noheading --format "{{.Name}}:{{.Tag}}  {{.ID}}  {{.Size}}" $$image; done
else
	@docker images $(REGISTRY)/operator:$(IMAGE_TAG); docker images $(REGISTRY)/runtime:$(IMAGE_TAG)
endif

image-base:
ifeq ($(IMAGE_TOOL),none)
	@echo "images: no docker daemon and no buildah (apt-get install buildah podman runc debootstrap)" >&2; exit 1
endif
ifeq ($(IMAGE_TOOL),buildah)
	@mkdir -p $(IMAGES_DIR)/tmp
	IMAGES_DIR=$(IMAGES_DIR) tests/images/local_base.sh
endif

image-operator: image-base
	$(BUILD_IMAGE) -f operator/Dockerfile -t $(OPERATOR_IMAGE) .

image-runtime: image-base
	$(BUILD_IMAGE) -f trainer-image/Dockerfile -t $(RUNTIME_IMAGE) .

## Build and push both images; prints the digests to pin in the chart (image.digest, runtimeImage.digest).
push: images
ifeq ($(IMAGE_TOOL),buildah)
	@for image in $(OPERATOR_IMAGE) $(RUNTIME_IMAGE); do \
	  if [ -n "$$($(BUILDAH) inspect --type image --format '{{index .OCIv1.Config.Labels "dev.peft-operator.local-base"}}' $$image)" ]; then \
	    echo "push: $$image is built on a locally made base, not python:3.11.14-slim-bookworm; build on a machine that reaches Docker Hub" >&2; exit 1; \
	  fi; \
	done
	@mkdir -p $(IMAGES_DIR)/digests
	$(BUILDAH) push $(PUSH_FLAGS) --digestfile $(IMAGES_DIR)/digests/operator $(OPERATOR_IMAGE) docker://$(OPERATOR_IMAGE)
	$(BUILDAH) push $(PUSH_FLAGS) --digestfile $(IMAGES_DIR)/digests/runtime $(RUNTIME_IMAGE) docker://$(RUNTIME_IMAGE)
	@echo "helm values: image.repository=$(REGISTRY)/operator image.tag=$(IMAGE_TAG) image.digest=$$(cat $(IMAGES_DIR)/digests/operator)"
	@echo "             runtimeImage.repository=$(REGISTRY)/runtime runtimeImage.tag=$(IMAGE_TAG) runtimeImage.digest=$$(cat $(IMAGES_DIR)/digests/runtime)"
else
	docker push $(PUSH_FLAGS) $(OPERATOR_IMAGE)
	docker push $(PUSH_FLAGS) $(RUNTIME_IMAGE)
	@echo "helm values: image.repository=$(REGISTRY)/operator image.tag=$(IMAGE_TAG) image.digest=$$(docker inspect --format '{{index .RepoDigests 0}}' $(OPERATOR_IMAGE) | cut -d@ -f2)"
	@echo "             runtimeImage.repository=$(REGISTRY)/runtime runtimeImage.tag=$(IMAGE_TAG) runtimeImage.digest=$$(docker inspect --format '{{index .RepoDigests 0}}' $(RUNTIME_IMAGE) | cut -d@ -f2)"
endif

## buildah, podman, runc and debootstrap from Debian's packages, when this machine lacks them (root). Its own
## make call before `make images`: which tool builds is decided when make reads this file.
image-tools:
	@if command -v buildah >/dev/null && command -v podman >/dev/null && command -v debootstrap >/dev/null; then \
	  echo "image-tools: buildah, podman and debootstrap are installed"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman runc debootstrap uidmap; \
	fi

## Build both images with buildah and start them for real under podman (minutes; see README).
test-images: install $(CONTROLPLANE_IF_GO)
	IMAGES_DIR=$(IMAGES_DIR) $(BIN)/pytest -m images --durations=0 tests/images

## Remove the layers no tagged image uses any more (each change of README.md or of the runtime's dependencies
## leaves a ~5.8 GB one behind); the cache of the current images stays.
## Also removes buildah's working containers left by interrupted builds: not while a build runs.
images-prune:
	-@$(BUILDAH) rm --all >/dev/null 2>&1
	@while [ -n "$$($(BUILDAH) rmi --prune 2>/dev/null)" ]; do :; done
	@du -sh $(IMAGES_DIR)/storage 2>/dev/null || true

## Everything buildah and podman keep for this repository (base, layers, both images).
images-clean:
	-$(BUILDAH) rm --all >/dev/null 2>&1
	-$(BUILDAH) rmi --all --force >/dev/null 2>&1
	rm -rf $(IMAGES_DIR)
