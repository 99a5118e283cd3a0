-- session_0
SET time_zone = '+00:00';

-- meta_ddl
CREATE TABLE IF NOT EXISTS `segment_profiles`.`syncs` (sync_id VARCHAR(255) NOT NULL PRIMARY KEY, state_table TEXT NOT NULL, generation BIGINT NOT NULL, dialect TEXT, definition INTEGER, used_columns TEXT, updated_at BIGINT);

-- state_ddl
CREATE TABLE IF NOT EXISTS `segment_profiles`.`sp_sync_customers_0123456789ab` (pk VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin NOT NULL PRIMARY KEY, checksum TEXT, version BIGINT NOT NULL, uncertain SMALLINT NOT NULL DEFAULT 0, pending SMALLINT NOT NULL DEFAULT 0, deleted_at BIGINT, mapping_checksums TEXT);

-- insert_meta
INSERT IGNORE INTO `segment_profiles`.`syncs` (sync_id, state_table, generation) VALUES (%s, %s, 0);

-- probe_model
SELECT * FROM (
SELECT customer_id, email, plan, score, signed_up_at, tags FROM customers WHERE plan <> 'closed'
) sp_m WHERE 1 = 0;

-- materialise_model
CREATE TEMPORARY TABLE sp_model AS SELECT CAST(sp_m.`customer_id` AS CHAR(255) CHARACTER SET utf8mb4) COLLATE utf8mb4_0900_bin AS __sp_key, substr(SHA2(CONCAT('identify:0123abcd|track:4567ef01|customer_id:TEXT,email:TEXT,score:FLOAT,signed_up_at:TIMESTAMP,tags:JSON', '|', QUOTE(CAST(`customer_id` AS CHAR)), '|', QUOTE(CAST(`email` AS CHAR)), '|', QUOTE(CAST(`score` AS CHAR)), '|', QUOTE(CAST(`signed_up_at` AS CHAR)), '|', QUOTE(CAST(`tags` AS CHAR))), 256), 1, 16) AS __sp_checksum, row_number() OVER () AS __sp_pos FROM (
SELECT customer_id, email, plan, score, signed_up_at, tags FROM customers WHERE plan <> 'closed'
) sp_m;

-- null_keys
SELECT __sp_pos FROM `sp_model` WHERE __sp_key IS NULL ORDER BY __sp_pos;

-- repeated_keys
SELECT __sp_key, count(*) - 1 FROM `sp_model` WHERE __sp_key IS NOT NULL GROUP BY __sp_key HAVING count(*) > 1 ORDER BY min(__sp_pos);

-- current_records
CREATE TEMPORARY TABLE sp_cur AS SELECT * FROM (SELECT sp_s.*, row_number() OVER (PARTITION BY sp_s.pk ORDER BY sp_s.checksum, sp_s.pos) AS sp_n FROM (SELECT __sp_key AS pk, __sp_checksum AS checksum, __sp_pos AS pos FROM `sp_model` WHERE __sp_key IS NOT NULL) sp_s) sp_r WHERE sp_n = 1;

-- current_index
CREATE INDEX `sp_cur_pk` ON `sp_cur` (pk);

-- empty_previous
CREATE TEMPORARY TABLE sp_prev (pk VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin, checksum VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin, version BIGINT, uncertain SMALLINT, pending SMALLINT, deleted_at BIGINT, mapping_checksums TEXT);

-- previous_index
CREATE INDEX `sp_prev_pk` ON `sp_prev` (pk);

-- diff_0
CREATE TEMPORARY TABLE sp_diff AS SELECT c.pos AS pos, coalesce(c.pk, p.pk) AS pk, c.checksum AS checksum, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL THEN p.checksum END AS prev_checksum, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL THEN p.version END AS prev_version, CASE WHEN c.pk IS NULL THEN coalesce(p.version, 0) + 1 WHEN p.pk IS NULL THEN 1 WHEN p.deleted_at IS NOT NULL THEN coalesce(p.version, 0) + 1 WHEN p.checksum IS NULL THEN GREATEST(coalesce(p.version, 1), 1) ELSE coalesce(p.version, 0) + 1 END AS version, CASE WHEN c.pk IS NULL THEN 'deleted' WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL AND p.checksum IS NOT NULL THEN 'updated' ELSE 'added' END AS kind, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL AND p.pending = 1 AND p.uncertain = 0 THEN 1 ELSE 0 END AS pending, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL THEN p.uncertain ELSE 0 END AS uncertain, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL THEN p.mapping_checksums END AS prev_mapping_checksums FROM `sp_prev` p LEFT JOIN `sp_cur` c ON c.pk = p.pk WHERE c.pk IS NULL AND (c.pk IS NULL AND p.deleted_at IS NULL);

-- diff_1
INSERT INTO `sp_diff` SELECT c.pos AS pos, coalesce(c.pk, p.pk) AS pk, c.checksum AS checksum, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL THEN p.checksum END AS prev_checksum, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL THEN p.version END AS prev_version, CASE WHEN c.pk IS NULL THEN coalesce(p.version, 0) + 1 WHEN p.pk IS NULL THEN 1 WHEN p.deleted_at IS NOT NULL THEN coalesce(p.version, 0) + 1 WHEN p.checksum IS NULL THEN GREATEST(coalesce(p.version, 1), 1) ELSE coalesce(p.version, 0) + 1 END AS version, CASE WHEN c.pk IS NULL THEN 'deleted' WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL AND p.checksum IS NOT NULL THEN 'updated' ELSE 'added' END AS kind, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL AND p.pending = 1 AND p.uncertain = 0 THEN 1 ELSE 0 END AS pending, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL THEN p.uncertain ELSE 0 END AS uncertain, CASE WHEN p.pk IS NOT NULL AND p.deleted_at IS NULL THEN p.mapping_checksums END AS prev_mapping_checksums FROM `sp_cur` c LEFT JOIN `sp_prev` p ON p.pk = c.pk WHERE c.pk IS NOT NULL AND NOT (p.pk IS NOT NULL AND p.deleted_at IS NULL AND p.checksum IS NOT NULL AND p.checksum = c.checksum AND p.uncertain = 0 AND p.pending = 0);

-- diff_index
CREATE INDEX `sp_diff_pos` ON `sp_diff` (pos);

-- diff_key_index
CREATE INDEX `sp_diff_pk` ON `sp_diff` (pk);

-- marks
CREATE TEMPORARY TABLE sp_marks (pk VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin, mark INTEGER);

-- mapping_checksums
CREATE TEMPORARY TABLE sp_mapsums (pk VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin, current TEXT, kept TEXT, unchanged SMALLINT);

-- materialise_changed
CREATE TEMPORARY TABLE sp_rows AS SELECT sp_m.*, CAST(sp_m.`customer_id` AS CHAR(255) CHARACTER SET utf8mb4) COLLATE utf8mb4_0900_bin AS __sp_key, substr(SHA2(CONCAT('identify:0123abcd|track:4567ef01|customer_id:TEXT,email:TEXT,score:FLOAT,signed_up_at:TIMESTAMP,tags:JSON', '|', QUOTE(CAST(`customer_id` AS CHAR)), '|', QUOTE(CAST(`email` AS CHAR)), '|', QUOTE(CAST(`score` AS CHAR)), '|', QUOTE(CAST(`signed_up_at` AS CHAR)), '|', QUOTE(CAST(`tags` AS CHAR))), 256), 1, 16) AS __sp_checksum, row_number() OVER () AS __sp_row FROM (
SELECT customer_id, email, plan, score, signed_up_at, tags FROM customers WHERE plan <> 'closed'
) sp_m JOIN `sp_diff` d ON d.pk = CAST(sp_m.`customer_id` AS CHAR(255) CHARACTER SET utf8mb4) COLLATE utf8mb4_0900_bin AND d.kind <> 'deleted';

-- keep_first_of_repeats_0
CREATE TEMPORARY TABLE sp_keep AS SELECT min(r.__sp_row) AS sp_row FROM `sp_rows` r JOIN `sp_cur` c ON c.pk = r.__sp_key AND c.checksum = r.__sp_checksum GROUP BY r.__sp_key;

-- keep_first_of_repeats_1
CREATE TEMPORARY TABLE sp_repeated AS SELECT __sp_key FROM `sp_rows` GROUP BY __sp_key HAVING count(*) > 1;

-- keep_first_of_repeats_2
DELETE r FROM `sp_rows` r JOIN `sp_repeated` x ON x.__sp_key = r.__sp_key LEFT JOIN `sp_keep` k ON k.sp_row = r.__sp_row WHERE k.sp_row IS NULL;

-- rows_index
CREATE INDEX `sp_rows_sp_key` ON `sp_rows` (__sp_key);

-- changed_rows
SELECT m.`customer_id`, m.`email`, m.`plan`, m.`score`, m.`signed_up_at`, m.`tags` FROM `sp_rows` m JOIN `sp_diff` d ON d.pk = m.__sp_key ORDER BY d.pos;

-- classifications
SELECT d.pk, m.__sp_checksum, d.version, d.kind, d.pending, d.uncertain, d.prev_mapping_checksums FROM `sp_rows` m JOIN `sp_diff` d ON d.pk = m.__sp_key ORDER BY d.pos;

-- deleted_rows
SELECT pk, prev_checksum, version FROM `sp_diff` WHERE kind = 'deleted' ORDER BY pk;

-- flags
CREATE TEMPORARY TABLE sp_flags AS SELECT pk, max(CASE WHEN mark = 1 THEN 1 ELSE 0 END) AS failed, max(CASE WHEN mark = 2 THEN 1 ELSE 0 END) AS rejected, max(CASE WHEN mark = 3 THEN 1 ELSE 0 END) AS delete_failed FROM `sp_marks` GROUP BY pk;

-- flags_index
CREATE INDEX `sp_flags_pk` ON `sp_flags` (pk);

-- mapping_checksums_index
CREATE INDEX `sp_mapsums_pk` ON `sp_mapsums` (pk);

-- move_generation
UPDATE `segment_profiles`.`syncs` SET generation = %s, dialect = %s, definition = %s, used_columns = %s, updated_at = %s WHERE sync_id = %s AND generation = %s;

-- commit_0
DELETE FROM `segment_profiles`.`sp_sync_customers_0123456789ab`;

-- commit_1
INSERT INTO `segment_profiles`.`sp_sync_customers_0123456789ab` (pk, checksum, version, uncertain, pending, deleted_at, mapping_checksums) SELECT pk, checksum, version, uncertain, pending, deleted_at, mapping_checksums FROM `sp_prev`;

-- commit_2
DELETE FROM `segment_profiles`.`sp_sync_customers_0123456789ab` WHERE pk IN (SELECT __sp_key FROM `sp_rows`);

-- commit_3
INSERT INTO `segment_profiles`.`sp_sync_customers_0123456789ab` (pk, checksum, version, uncertain, pending, deleted_at, mapping_checksums) SELECT d.pk, CASE WHEN (coalesce(f.failed, 0) = 1 OR coalesce(f.rejected, 0) = 1) THEN d.prev_checksum ELSE r.__sp_checksum END, CASE WHEN coalesce(s.unchanged, 0) = 1 OR ((coalesce(f.failed, 0) = 1 OR coalesce(f.rejected, 0) = 1) AND d.prev_checksum IS NOT NULL) THEN d.prev_version ELSE d.version END, CASE WHEN coalesce(f.failed, 0) = 1 AND d.prev_checksum IS NOT NULL THEN 1 ELSE 0 END, coalesce(f.rejected, 0), NULL, CASE WHEN (coalesce(f.failed, 0) = 1 OR coalesce(f.rejected, 0) = 1) THEN s.kept ELSE s.current END FROM `sp_rows` r JOIN `sp_diff` d ON d.pk = r.__sp_key LEFT JOIN `sp_flags` f ON f.pk = d.pk LEFT JOIN `sp_mapsums` s ON s.pk = d.pk;

-- commit_4
UPDATE `segment_profiles`.`sp_sync_customers_0123456789ab` SET uncertain = 1, pending = 0 WHERE pk IN (SELECT pk FROM `sp_flags` WHERE delete_failed = 1);

-- commit_5
UPDATE `segment_profiles`.`sp_sync_customers_0123456789ab` SET checksum = NULL, version = coalesce(version, 0) + 1, uncertain = 0, pending = 0, deleted_at = %s, mapping_checksums = NULL WHERE pk IN (SELECT pk FROM `sp_diff` WHERE kind = 'deleted') AND pk NOT IN (SELECT pk FROM `sp_flags` WHERE delete_failed = 1);

-- commit_6
DELETE FROM `segment_profiles`.`sp_sync_customers_0123456789ab` WHERE deleted_at IS NOT NULL AND deleted_at <= %s;

-- live_count
SELECT count(*) FROM `segment_profiles`.`sp_sync_customers_0123456789ab` WHERE deleted_at IS NULL;

