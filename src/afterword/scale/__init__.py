"""Batch pipelines over huge logs on Ray Data: sharded import and embedding.

See :mod:`afterword.scale.pipelines`. ``ray[data]`` is an optional extra
(``pip install 'afterword[scale]'``) imported only when a pipeline runs.
"""

from afterword.scale.pipelines import embed_local, embed_sharded, expand_shards, import_sharded, iter_shard

__all__ = ["import_sharded", "embed_sharded", "embed_local", "expand_shards", "iter_shard"]
