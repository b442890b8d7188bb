"""The local single-node Apache Kafka broker (KRaft), fetched as jars from Maven Central."""
