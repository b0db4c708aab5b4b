#!/usr/bin/env bash
# Deletes the kind cluster of the kit.
set -euo pipefail
kind delete cluster --name "${CLUSTER:-meshpass}"
