-- The model's error as analysts track it: for each unit and UTC day whose fuel is reported, the prediction made
-- nearest the start of the day (within 3 hours either side, so that its next 24 hours cover most of the day)
-- against the day's reported fuel. The predictions come from bronze_predictions, the record of every prediction
-- served (DynamoDB's items expire). A unit's position can be predicted more than once (a later refresh recomputes
-- it from a newer table version, a new model is deployed): the first prediction served for it counts, as the one
-- a reader saw at the time; one landed twice counts once.
-- parameters: first_day, last_day, first_day, last_day
WITH served AS (
  SELECT transport_unit_id, predicted_at, value, model_version,
         row_number() OVER (
           PARTITION BY transport_unit_id, predicted_at ORDER BY source_version, model_version, _file, _line
         ) AS copy
  FROM bronze_predictions
  WHERE predicted_date BETWEEN date_add('day', -1, CAST(? AS date)) AND CAST(? AS date)
), actual AS (
  SELECT transport_unit_id, stat_date, fuel_used_l
  FROM performance_stats_current
  WHERE stat_date BETWEEN CAST(? AS date) AND CAST(? AS date)
), candidates AS (
  SELECT a.transport_unit_id, a.stat_date AS day, a.fuel_used_l AS actual_l, s.predicted_at, s.value AS predicted_l,
         s.model_version,
         row_number() OVER (
           PARTITION BY a.transport_unit_id, a.stat_date
           ORDER BY abs(date_diff('second', CAST(a.stat_date AS timestamp), s.predicted_at)), s.predicted_at
         ) AS nearest
  FROM actual AS a
  JOIN served AS s
    ON s.transport_unit_id = a.transport_unit_id AND s.copy = 1
   AND s.predicted_at BETWEEN CAST(a.stat_date AS timestamp) - INTERVAL '3' HOUR
                          AND CAST(a.stat_date AS timestamp) + INTERVAL '3' HOUR
)
SELECT day, transport_unit_id, model_version, predicted_at, predicted_l, actual_l,
       predicted_l - actual_l AS error_l,
       abs(predicted_l - actual_l) / nullif(actual_l, 0) AS abs_pct_error
FROM candidates
WHERE nearest = 1
ORDER BY day, transport_unit_id
