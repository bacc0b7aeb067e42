-- Every position of one UTC day, for a map: unit, type, time, place.
-- parameters: day
SELECT transport_unit_id, transport_type, ts, lat, lon
FROM bronze_locations
WHERE event_date = CAST(? AS date)
ORDER BY transport_unit_id, ts
