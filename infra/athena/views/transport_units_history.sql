-- transport_units_history: every version of every transport unit (slowly changing dimension, type 2).
-- A version is valid from its change's ts_ms up to, not including, the next change of the same key (an update or
-- a delete); valid_to is NULL and is_current true for the version still in force. A delete ends a version and
-- opens none; a later insert of the same key opens a new one. Changes are ordered as in transport_units_current.
-- A change delivered twice (Debezium is at-least-once: the same ts_ms and lsn at another Kafka offset) counts once.
SELECT transport_unit_id, transport_type, name, capacity_t,
       ts_ms AS valid_from, next_ts_ms AS valid_to, next_ts_ms IS NULL AS is_current
FROM (
  SELECT *,
         lead(ts_ms) OVER (
           PARTITION BY transport_unit_id
           ORDER BY ts_ms, lsn NULLS FIRST, _source_partition, _source_offset, _file, _line
         ) AS next_ts_ms
  FROM (
    SELECT *,
           row_number() OVER (
             PARTITION BY transport_unit_id, ts_ms, lsn
             ORDER BY _source_partition, _source_offset, _file, _line
           ) AS delivery
    FROM bronze_transport_units
  ) AS delivered
  WHERE delivery = 1
) AS changes
WHERE op <> 'd'
