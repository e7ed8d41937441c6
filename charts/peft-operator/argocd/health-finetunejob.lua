-- Argo CD health of peft.dev/v1alpha1 FineTuneJob (resource.customizations.health.peft.dev_FineTuneJob).
-- Succeeded: Healthy. Failed, Cancelled: Degraded. Queued (waiting for Kueue): Suspended.
-- Pending, Running, no status yet: Progressing, with the training progress when the trainer reported it.
-- Argo CD opens only Lua's base, table, package and a safe os for this script (string and math only when an
-- admin sets resource.customizations.useOpenLibs.peft.dev_FineTuneJob): arithmetic and tables, nothing more.
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }
if obj.status == nil or obj.status.phase == nil then
  return hs
end
local status = obj.status

local function condition(type)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == type then
        return c
      end
    end
  end
  return nil
end

-- The message of a condition, or nil when it has none.
local function message_of(type)
  local c = condition(type)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return nil
end

-- n rounded down to a whole number (math.floor, without the math library).
local function whole(n)
  return n - n % 1
end

-- x to 4 significant digits, as string.format("%.4g", x) would write the losses a trainer reports.
local function four_digits(x)
  local magnitude = x
  if magnitude < 0 then
    magnitude = -magnitude
  end
  if magnitude == 0 then
    return 0
  end
  local exponent = 0
  while magnitude >= 10 do
    magnitude = magnitude / 10
    exponent = exponent + 1
  end
  while magnitude < 1 do
    magnitude = magnitude * 10
    exponent = exponent - 1
  end
  local decimals = 3 - exponent
  if decimals >= 0 then
    return whole(x * 10 ^ decimals + 0.5) / 10 ^ decimals
  end
  return whole(x / 10 ^ -decimals + 0.5) * 10 ^ -decimals
end

local function progress_text(p)
  local parts = {}
  if p.totalSteps ~= nil and p.totalSteps > 0 then
    table.insert(parts, "step " .. whole(p.step or 0) .. "/" .. whole(p.totalSteps))
  elseif p.step ~= nil then
    table.insert(parts, "step " .. whole(p.step))
  end
  if p.loss ~= nil then
    table.insert(parts, "loss " .. four_digits(p.loss))
  end
  if p.eta ~= nil and p.eta ~= "" then
    table.insert(parts, "eta " .. p.eta)
  end
  local text = whole(p.percent) .. "%"
  if #parts > 0 then
    text = text .. " (" .. table.concat(parts, ", ") .. ")"
  end
  return text
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message_of("Succeeded") or "Training finished"
  return hs
end
-- The terminal phases in lower case, for the message (without string.lower).
local ended = { Failed = "failed", Cancelled = "cancelled" }
if ended[phase] ~= nil then
  hs.status = "Degraded"
  hs.message = message_of("Failed") or ("FineTuneJob " .. ended[phase])
  return hs
end

-- Not finished: a status older than the object describes nothing yet.
local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. whole(generation)
  return hs
end
if phase == "Queued" then
  hs.status = "Suspended"
  hs.message = message_of("Queued") or "Waiting for admission"
  return hs
end

-- Pending, Running (and phases this script does not know yet). While Pending, the Running condition
-- carries why the trainer has not started (ImagePullError, Unschedulable, ...).
hs.message = message_of("Running") or phase
if status.progress ~= nil and status.progress.percent ~= nil then
  hs.message = hs.message .. " " .. progress_text(status.progress)
end
return hs
