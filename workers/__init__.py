"""bertserve.workers: model replicas (Ray actors) and the pool that manages them.

Nothing imported at package level touches torch: the front end imports the protocol and
pool modules, and only the replica processes load the torch backend.
"""
