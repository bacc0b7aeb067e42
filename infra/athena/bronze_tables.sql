-- fleetlake bronze tables for Athena (engine v3) and Redshift Spectrum, over the symlink manifests that
-- partition-sync writes. template.yaml and the local stack create the same tables as AWS::Glue::Table resources;
-- this file is for creating them by hand (replace the bucket). The column lists are generated from the table specs
-- (shared/core/src/bronze.rs → infra/schema/bronze.json → `make schema`); the partition column is not stored in the
-- data files.

CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_locations (
  transport_unit_id string, ts timestamp, lat double, lon double, transport_type string, speed_kmh double,
  heading_deg double, altitude_m double, temperature_c double, wind_speed_kmh double, precipitation_mm double,
  weather_code int, weather_status string,
  `_extra` string, `_source_topic` string, `_source_partition` int, `_source_offset` bigint,
  `_source_timestamp` timestamp, `_source_key` string, `_source_etag` string, `_ingested_at` timestamp,
  `_file` string, `_line` bigint
)
PARTITIONED BY (event_date date)
ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'
STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/locations/_symlink_format_manifest/';

CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_performance_stats (
  op string, ts_ms timestamp, lsn bigint, transport_unit_id string, distance_km double, fuel_used_l double,
  engine_hours double,
  `_extra` string, `_source_topic` string, `_source_partition` int, `_source_offset` bigint,
  `_source_timestamp` timestamp, `_source_key` string, `_source_etag` string, `_ingested_at` timestamp,
  `_file` string, `_line` bigint
)
PARTITIONED BY (stat_date date)
ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'
STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/performance_stats/_symlink_format_manifest/';

CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_transport_units (
  op string, ts_ms timestamp, lsn bigint, transport_unit_id string, transport_type string, name string,
  capacity_t double,
  `_extra` string, `_source_topic` string, `_source_partition` int, `_source_offset` bigint,
  `_source_timestamp` timestamp, `_source_key` string, `_source_etag` string, `_ingested_at` timestamp,
  `_file` string, `_line` bigint
)
ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'
STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/transport_units/_symlink_format_manifest/';

CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_predictions (
  transport_unit_id string, predicted_at timestamp, target string, value double, unit string, model_version string,
  features string, source_version bigint,
  `_extra` string, `_source_topic` string, `_source_partition` int, `_source_offset` bigint,
  `_source_timestamp` timestamp, `_source_key` string, `_source_etag` string, `_ingested_at` timestamp,
  `_file` string, `_line` bigint
)
PARTITIONED BY (predicted_date date)
ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'
STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/predictions/_symlink_format_manifest/';

-- The state tables of the change logs (current state, and history as SCD type 2), rewritten by partition-sync on
-- each commit of their change log. Athena can use the views in infra/athena/views/ instead.
CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_performance_stats_current (
  transport_unit_id string, distance_km double, fuel_used_l double, engine_hours double, updated_at timestamp,
  lsn bigint
)
PARTITIONED BY (stat_date date)
ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'
STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/performance_stats_current/_symlink_format_manifest/';

CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_performance_stats_history (
  transport_unit_id string, distance_km double, fuel_used_l double, engine_hours double, valid_from timestamp,
  valid_to timestamp, is_current boolean
)
PARTITIONED BY (stat_date date)
ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'
STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/performance_stats_history/_symlink_format_manifest/';

CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_transport_units_current (
  transport_unit_id string, transport_type string, name string, capacity_t double, updated_at timestamp, lsn bigint
)
ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'
STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/transport_units_current/_symlink_format_manifest/';

CREATE EXTERNAL TABLE IF NOT EXISTS fleetlake.bronze_transport_units_history (
  transport_unit_id string, transport_type string, name string, capacity_t double, valid_from timestamp,
  valid_to timestamp, is_current boolean
)
ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'
STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/transport_units_history/_symlink_format_manifest/';

-- The alternative, Athena engine v3 only: a native Delta Lake table reads the Delta log itself (no manifests, no
-- partitions to register; Athena takes the schema from the log). Redshift Spectrum and older engines need the
-- symlink tables above.
-- CREATE EXTERNAL TABLE fleetlake.delta_locations
-- LOCATION 's3://fleetlake-lake-123456789012-eu-west-1/bronze/locations/'
-- TBLPROPERTIES ('table_type' = 'DELTA');
