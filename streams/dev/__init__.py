"""Everything a production image may leave out: local brokers (Apache Kafka from its Maven
Central jars, Tansu), the dev TLS material, the dev stack (`leadflow dev`) and its demo data,
and the child-process worker wrapper that the dev stack, the tests and the benchmarks share.

May import everything but `streams.cli`.
"""
