-- transport_units_current: each transport unit as the source database holds it now, one row per unit.
-- The latest change of each key in source order wins: (ts_ms, lsn). Equal (ts_ms, lsn) is one change delivered
-- again (Debezium is at-least-once): the first delivery, by Kafka position (then by file and line for changes
-- landed from files), counts. A unit whose latest change is a delete is absent.
SELECT transport_unit_id, transport_type, name, capacity_t, ts_ms AS updated_at, lsn
FROM (
  SELECT *,
         row_number() OVER (
           PARTITION BY transport_unit_id
           ORDER BY ts_ms DESC, lsn DESC NULLS LAST, _source_partition, _source_offset, _file, _line
         ) AS change_rank
  FROM bronze_transport_units
) AS changes
WHERE change_rank = 1 AND op <> 'd'
