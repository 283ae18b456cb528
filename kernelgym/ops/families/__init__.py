"""The catalog's op families, one module per family (elementwise, reductions, norms, linalg, conv,
pooling, scans, shape, gather, attention, views, losses, recurrent). Each registers its ops into
`kernelgym.ops.registry.CATALOG` when imported; `kernelgym.ops.catalog` imports them in the order
that fixes the catalog's (and so the sampler's) op order."""
