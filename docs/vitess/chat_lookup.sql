-- The unsharded keyspace `chat_lookup` beside the sharded keyspace `chat` (docs/vitess/README.md).
-- Sequences: the sharded tables' ids (AUTO_INCREMENT cannot be unique across shards). Start each `next_id` above
-- the highest id already used when moving an existing database.
CREATE TABLE applications_seq (id INT, next_id BIGINT, cache BIGINT, PRIMARY KEY (id)) COMMENT 'vitess_sequence';
CREATE TABLE chats_seq (id INT, next_id BIGINT, cache BIGINT, PRIMARY KEY (id)) COMMENT 'vitess_sequence';
CREATE TABLE messages_seq (id INT, next_id BIGINT, cache BIGINT, PRIMARY KEY (id)) COMMENT 'vitess_sequence';
INSERT INTO applications_seq (id, next_id, cache) VALUES (0, 1, 100);
INSERT INTO chats_seq (id, next_id, cache) VALUES (0, 1, 1000);
INSERT INTO messages_seq (id, next_id, cache) VALUES (0, 1, 10000);
CREATE TABLE webhook_endpoints_seq (id INT, next_id BIGINT, cache BIGINT, PRIMARY KEY (id)) COMMENT 'vitess_sequence';
INSERT INTO webhook_endpoints_seq (id, next_id, cache) VALUES (0, 1, 100);

-- Lookup vindexes: token, previous token and idempotency key -> the shard of their application (unique across
-- shards, as the unique keys of `applications` are on one server).
CREATE TABLE applications_token_lookup (
  token VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  keyspace_id VARBINARY(128) NOT NULL,
  PRIMARY KEY (token)
);
CREATE TABLE applications_previous_token_lookup (
  previous_token VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  keyspace_id VARBINARY(128) NOT NULL,
  PRIMARY KEY (previous_token)
);
-- Token digests (migration 0006): what every lookup uses once the plaintext columns are erased.
CREATE TABLE applications_token_digest_lookup (
  token_digest VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  keyspace_id VARBINARY(128) NOT NULL,
  PRIMARY KEY (token_digest)
);
CREATE TABLE applications_previous_token_digest_lookup (
  previous_token_digest VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  keyspace_id VARBINARY(128) NOT NULL,
  PRIMARY KEY (previous_token_digest)
);
CREATE TABLE applications_idempotency_key_lookup (
  idempotency_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  keyspace_id VARBINARY(128) NOT NULL,
  PRIMARY KEY (idempotency_key)
);
