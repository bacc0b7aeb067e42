-- Positions per UTC day, transport type and unit.
-- parameters: first_day, last_day (dates as 'YYYY-MM-DD'; event_date is the partition column: only those days are read)
SELECT event_date AS day, transport_type, transport_unit_id, count(*) AS positions
FROM bronze_locations
WHERE event_date BETWEEN CAST(? AS date) AND CAST(? AS date)
GROUP BY event_date, transport_type, transport_unit_id
ORDER BY day, transport_type, transport_unit_id
