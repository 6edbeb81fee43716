"""The Kubernetes target: the stack as plain manifests in a kustomize directory (plan, manifests), applied with kubectl (runtime)."""
