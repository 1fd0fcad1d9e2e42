# Shared by the testnet scripts.
TESTNET_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$TESTNET_DIR")"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-keyreg}"
if docker compose version >/dev/null 2>&1; then
  compose() { docker compose -f "$TESTNET_DIR/docker-compose.yml" "$@"; }
else
  compose() { docker-compose -f "$TESTNET_DIR/docker-compose.yml" "$@"; }
fi
