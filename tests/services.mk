# Services the integration tests start on loopback (tests/services.py): PostgreSQL server
# binaries from Debian's package. Quick and idempotent once they are there; the Python side
# (psycopg2-binary, boto3, moto[server]) comes with the dev extra.
PG_CTL_GLOB := /usr/lib/postgresql/*/bin/pg_ctl
APT_SUDO    := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: services

services: ## PostgreSQL server binaries for tests/integration/test_tracking_server.py
	@if ls $(PG_CTL_GLOB) >/dev/null 2>&1; then \
		echo "postgresql: $$(ls -d $(PG_CTL_GLOB) | tail -n1)"; \
	else \
		echo "postgresql: installing Debian's package"; \
		$(APT_SUDO) apt-get update -qq && \
		$(APT_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null && \
		ls $(PG_CTL_GLOB); \
	fi
