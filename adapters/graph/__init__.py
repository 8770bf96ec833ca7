"""The knowledge graph: Neo4j over Bolt (FalkorDB's Bolt listener stands in here); entity extraction with spaCy."""
