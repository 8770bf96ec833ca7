"""Deployment: one image, and compose files, Kubernetes manifests and systemd units generated from graph.yaml.

Kept import-free: `python -m scaigrid.runtime.deploy.health` runs as an exec probe every few seconds.
"""
