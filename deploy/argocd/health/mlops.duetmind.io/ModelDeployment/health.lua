-- Argo CD health check for mlops.duetmind.io/ModelDeployment (status written by mlops-operator).
-- Healthy: phase Ready for the current generation. Progressing: no status yet, status older than
-- the spec (observedGeneration < generation), phase Pending or Progressing. Degraded: phase Degraded
-- or Failed, or a Degraded condition that is True.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local ready = condition(status, "Ready")
local degraded = condition(status, "Degraded")
local drifting = condition(status, "Drifting")
local phase = status.phase

if phase == "Failed" or phase == "Degraded" or (degraded ~= nil and degraded.status == "True") then
  hs.status = "Degraded"
  if degraded ~= nil and degraded.status == "True" and degraded.message ~= nil and degraded.message ~= "" then
    hs.message = degraded.message
  elseif ready ~= nil and ready.message ~= nil then
    hs.message = ready.message
  else
    hs.message = "Phase " .. tostring(phase)
  end
  return hs
end

if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = "Serving " .. tostring(status.currentVersion)
  if drifting ~= nil and drifting.status == "True" then
    -- Drift is a monitoring finding, not a serving failure: it stays Healthy, and says so.
    hs.message = hs.message .. "; drifting: " .. tostring(drifting.message)
  end
  return hs
end

hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
else
  hs.message = "Phase " .. tostring(phase)
end
return hs
