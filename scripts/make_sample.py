"""Write ``src/afterword/data/sample.jsonl``: the sample that ``afterword run`` uses by default.

The conversations are written by hand, not templated: nine users with their
own domains (Python and SQL help, cooking in metric units, travel, US taxes,
a student learning calculus, SaaS customer support, React) over six weeks.
They return days later to report outcomes, give thumbs, ratings and
corrections that carry the right answer, rephrase after a bad answer,
complain, thank, abandon, and state preferences and facts; a few answers
repeat a mistake another user already corrected. A few messages carry
PII-like strings (an email, phone numbers, a fake API key) for redaction.

Deterministic: run ``python scripts/make_sample.py`` and the file is the same
byte for byte (timestamps come from the script, not the clock).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "afterword" / "data" / "sample.jsonl"
START = datetime(2026, 9, 1, tzinfo=UTC)  # a Tuesday
GPT = "gpt-4o-mini"
SUPPORT = "trellis-support-v2"
SUPPORT_SYSTEM = (
    "You are the support assistant for Trellis, a project-management SaaS. Be concise. "
    "Settings live under the gear icon; developer settings (API keys, webhooks) are under Settings > Developers."
)

# (user, day, "HH:MM", model, turns, feedback). A turn is "U: ..." (user), "A: ..." (assistant)
# or "S: ..." (system). Feedback: {"i": message index} or no "i" (the last assistant message),
# plus thumbs/rating/comment/correction and "after" (minutes after the conversation started).
CONVERSATIONS: list[tuple[str, int, str, str, list[str], list[dict]]] = [
    # -- priya: data engineer, Python 3.9 at work, pandas and SQL -------------------------------
    (
        "priya",
        0,
        "09:12",
        GPT,
        [
            "U: I'm on Python 3.9 at work (can't upgrade, it's the company image). How do I read a CSV with "
            "pandas but only keep rows where status is 'active'?",
            "A: Read it and filter with a boolean mask:\n\n```python\nimport pandas as pd\n\ndf = pd.read_csv("
            "'accounts.csv')\nactive = df[df['status'] == 'active']\n```\n\nIf the file is large, pass "
            "`usecols=` to load only the columns you need.",
            "U: perfect, thanks",
        ],
        [{"thumbs": 1, "after": 2}],
    ),
    (
        "priya",
        1,
        "14:40",
        GPT,
        [
            "U: I have a loop that builds a DataFrame row by row from API results. What's the idiomatic way to "
            "add a row?",
            "A: Use `DataFrame.append`:\n\n```python\nfor rec in results:\n    df = df.append(rec, "
            "ignore_index=True)\n```",
            "U: AttributeError: 'DataFrame' object has no attribute 'append'. We're on pandas 2.1.",
            "A: You're right: `DataFrame.append` was deprecated in 1.4 and removed in pandas 2.0. Collect the "
            "records in a list and build the frame once:\n\n```python\ndf = pd.DataFrame(results)\n```\n\nor, to "
            "add to an existing frame, `df = pd.concat([df, pd.DataFrame(results)], ignore_index=True)`.",
            "U: ok that works and it's way faster too",
        ],
        [
            {
                "i": 1,
                "thumbs": -1,
                "correction": "DataFrame.append was removed in pandas 2.0. Collect rows in a list and call "
                "pd.DataFrame(rows) once, or use pd.concat([df, pd.DataFrame(rows)], ignore_index=True).",
                "after": 3,
            },
            {"i": 3, "thumbs": 1, "after": 6},
        ],
    ),
    (
        "priya",
        3,
        "10:05",
        GPT,
        [
            "U: Can you rewrite this if/elif chain as something cleaner? It maps event types to handlers: "
            "'click' -> on_click, 'view' -> on_view, 'buy' -> on_buy, anything else -> on_unknown.",
            "A: A `match` statement reads well here:\n\n```python\nmatch event.type:\n    case 'click':\n        "
            "on_click(event)\n    case 'view':\n        on_view(event)\n    case 'buy':\n        on_buy(event)\n"
            "    case _:\n        on_unknown(event)\n```",
            "U: that's a SyntaxError for me. I told you I'm on 3.9",
            "A: Sorry about that: `match` needs Python 3.10. On 3.9 use a dispatch dict:\n\n```python\nHANDLERS "
            "= {'click': on_click, 'view': on_view, 'buy': on_buy}\nHANDLERS.get(event.type, on_unknown)(event)\n"
            "```",
            "U: yes, that's what I wanted",
        ],
        [
            {
                "i": 1,
                "correction": "The user is on Python 3.9, where `match` does not exist (it is 3.10+). Use a "
                "dispatch dict: HANDLERS.get(event.type, on_unknown)(event).",
                "after": 2,
            },
            {"i": 3, "rating": 5, "after": 4},
        ],
    ),
    (
        "priya",
        6,
        "16:20",
        GPT,
        [
            "U: quick one: how do I strip the prefix 'tmp_' from column names in pandas?",
            "A: On Python 3.9+ you can use `str.removeprefix`:\n\n```python\ndf.columns = [c.removeprefix('tmp_') "
            "for c in df.columns]\n```\n\nor the vectorised `df.columns.str.removeprefix('tmp_')` in pandas 1.4+.",
            "U: nice, thx",
        ],
        [],
    ),
    (
        "priya",
        9,
        "11:47",
        GPT,
        [
            "U: Following up on the row-by-row DataFrame thing from last week: the pd.concat fix worked, the job "
            "went from 40 minutes to under 2.",
            "A: Great to hear. Building the frame once avoids copying the whole DataFrame on every iteration, "
            "which is where the 40 minutes went.",
        ],
        [{"rating": 5, "comment": "follow-up: fix confirmed in production", "after": 1}],
    ),
    (
        "priya",
        13,
        "09:30",
        GPT,
        [
            "U: In Postgres, how do I get the latest order per customer? orders(id, customer_id, created_at, total)",
            "A: Use `DISTINCT ON`, which PostgreSQL supports directly:\n\n```sql\nSELECT DISTINCT ON (customer_id) "
            "*\nFROM orders\nORDER BY customer_id, created_at DESC;\n```\n\nThe `ORDER BY` must start with the "
            "`DISTINCT ON` columns.",
            "U: works, and it's faster than my window function version",
        ],
        [{"thumbs": 1, "after": 5}],
    ),
    (
        "priya",
        20,
        "15:02",
        GPT,
        [
            "U: Good news, IT finally moved us to Python 3.11. Can I use match statements now?",
            "A: Yes. `match` arrived in 3.10, so on 3.11 your dispatch could be written either way; 3.11 also "
            "gives you faster startup, `tomllib` and exception groups.",
            "U: great, switching the event router back to match then",
        ],
        [],
    ),
    (
        "priya",
        27,
        "10:18",
        GPT,
        [
            "U: Need a NULL-safe default in a Postgres query: show 0 when discount is NULL.",
            "A: Use `IFNULL(discount, 0)`.",
            "U: ERROR: function ifnull(numeric, integer) does not exist",
        ],
        [
            {
                "thumbs": -1,
                "correction": "PostgreSQL has no IFNULL (that is MySQL/SQLite). Use COALESCE(discount, 0).",
                "after": 3,
            }
        ],
    ),
    # -- marco: home cook, metric, vegetarian ---------------------------------------------------
    (
        "marco",
        0,
        "18:30",
        GPT,
        [
            "U: I'm vegetarian and I cook for four most nights. Can you give me a quick weeknight risotto?",
            "A: Mushroom risotto for four:\n- 320 g arborio rice\n- 400 g mixed mushrooms, sliced\n- 1 onion, 2 "
            "garlic cloves\n- 1.2 l hot chicken stock\n- 100 ml white wine, 40 g butter, 60 g parmesan\n\nSweat "
            "the onion, toast the rice 2 minutes, add wine, then stock a ladle at a time for about 18 minutes.",
            "U: chicken stock? I just said I'm vegetarian.",
            "A: Sorry, swap it for 1.2 l hot vegetable stock. Also note that traditional parmesan is made with "
            "animal rennet; look for a vegetarian hard cheese if that matters to you.",
            "U: ok, thanks for the rennet tip at least",
        ],
        [
            {
                "i": 1,
                "thumbs": -1,
                "correction": "Use vegetable stock, not chicken stock: the user is vegetarian.",
                "after": 2,
            }
        ],
    ),
    (
        "marco",
        2,
        "12:10",
        GPT,
        [
            "U: I prefer metric units, always. My American cookie recipe says 2 cups of flour. How many grams is that?",
            "A: 2 cups of all-purpose flour is about 500 g (1 cup = 250 g).",
            "U: That can't be right, the dough came out like a brick.",
            "A: You're right, I used the water weight. A cup of all-purpose flour weighs about 120-125 g, so 2 "
            "cups is roughly 250 g.",
            "U: yeah the second batch was fine",
        ],
        [
            {
                "i": 1,
                "thumbs": -1,
                "correction": "1 US cup of all-purpose flour is about 120-125 g, so 2 cups is about 250 g. "
                "250 g per cup is water, not flour.",
                "after": 90,
            }
        ],
    ),
    (
        "marco",
        5,
        "19:05",
        GPT,
        [
            "U: Same American recipe says bake at 425°F. What's that for my oven?",
            "A: 425°F is about 240°C.",
            "U: are you sure? that seems really hot",
            "A: Let me redo it: (425 - 32) x 5/9 = 218°C, so set your oven to 220°C, or 200°C with a fan.",
            "U: ok 220 it is",
        ],
        [{"i": 1, "correction": "425°F = (425-32)*5/9 = 218°C, about 220°C (200°C fan).", "after": 1}],
    ),
    (
        "marco",
        8,
        "17:44",
        GPT,
        [
            "U: what can I make with leftover chickpeas, spinach and a tin of tomatoes? Vegetarian, 30 minutes max.",
            "A: Chickpea and spinach stew:\n1. Fry 1 sliced onion and 2 garlic cloves in 2 tbsp olive oil, 5 min.\n"
            "2. Add 1 tsp cumin, 1 tsp smoked paprika, then the 400 g tin of tomatoes; simmer 10 min.\n3. Add the "
            "chickpeas (about 240 g drained) and simmer 5 min.\n4. Wilt in 150 g spinach, season, finish with "
            "lemon.\nServe with rice or flatbread.",
            "U: made it, family loved it!",
        ],
        [{"rating": 5, "after": 70}],
    ),
    (
        "marco",
        12,
        "18:12",
        GPT,
        [
            "U: How much dried pasta per person for a main course?",
            "A: About 4 ounces (a quarter pound) per person.",
            "U: Metric please, I've told you before.",
            "A: Sorry: about 100 g of dried pasta per person for a main, 70-80 g for a starter.",
        ],
        [{"i": 1, "comment": "ignores my metric preference again", "thumbs": -1, "after": 1}],
    ),
    (
        "marco",
        16,
        "11:20",
        GPT,
        [
            "U: I want to bake focaccia on Saturday. Can you give me a recipe in grams, for a 30x40 cm tray?",
            "A: Focaccia for a 30x40 cm tray:\n- 500 g bread flour\n- 400 g water (80% hydration)\n- 10 g salt\n- "
            "4 g instant yeast\n- 40 g olive oil, plus more for the tray\n\nMix, rest 30 min, do 3 sets of "
            "stretch-and-folds 30 min apart, then cold-proof overnight. Next day, stretch into the oiled tray, "
            "proof 2 hours, dimple, and bake at 230°C for 20-25 minutes.",
            "U: amazing, exactly the format I like",
        ],
        [{"thumbs": 1, "after": 3}],
    ),
    (
        "marco",
        19,
        "10:02",
        GPT,
        [
            "U: focaccia report: it rose beautifully but the bottom was pale. Oven rack in the middle.",
            "A: Move the tray to the lowest rack for the first 12-15 minutes, then to the middle; a dark metal "
            "tray also browns the bottom better than glass.",
            "U: will try that next time, thanks",
        ],
        [],
    ),
    (
        "marco",
        26,
        "19:40",
        GPT,
        [
            "U: Friend's recipe says 1 stick of butter. Grams?",
            "A: One US stick of butter is 113 g (4 oz, 8 tablespoons).",
            "U: thanks, perfect",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    # -- hannah: travel, UK passport -------------------------------------------------------------
    (
        "hannah",
        1,
        "08:15",
        GPT,
        [
            "U: I'm a UK citizen flying to Lisbon on 14 October for a week. My passport expires next March. Is "
            "that enough?",
            "A: For the Schengen area your passport must be valid for at least 6 months from your arrival date, "
            "so a March expiry is cutting it close; renew before you travel.",
            "U: That's not what the gov.uk page says though?",
            "A: You're right to check. The Schengen rule for UK passports is: issued less than 10 years before "
            "the day you enter, and valid for at least 3 months after the day you plan to leave. Leaving on 21 "
            "October with a March expiry meets the 3-month rule, as long as the passport was issued within the "
            "last 10 years.",
            "U: ok, it was issued in 2017, so I'm fine. Cheers",
        ],
        [
            {
                "i": 1,
                "correction": "For UK passports entering Schengen: issued less than 10 years before entry and "
                "valid at least 3 months after the planned departure date. Not 6 months.",
                "thumbs": -1,
                "after": 4,
            }
        ],
    ),
    (
        "hannah",
        3,
        "20:31",
        GPT,
        [
            "U: Please book the Hotel Lisboa Alfama for 14-21 October, 2 adults, and send the confirmation to "
            "hannah.keller@example.com. My phone is +44 7700 900123 if they need it.",
            "A: I can't make bookings directly, but here's what to do: book on the hotel's site or a booking "
            "platform for 14-21 October (7 nights, 2 adults), enter hannah.keller@example.com for the "
            "confirmation, and add your phone number for the front desk. Ask for a room away from the street "
            "in Alfama; weekend nights can be loud.",
            "U: ok I'll do it myself then",
        ],
        [{"rating": 3, "after": 5}],
    ),
    (
        "hannah",
        4,
        "09:50",
        GPT,
        [
            "U: How do I get from Lisbon airport to Alfama without a taxi?",
            "A: Take the metro red line (Vermelha) from Aeroporto to Alameda, change to the green line (Verde) "
            "towards Cais do Sodré and get off at Baixa-Chiado; from there it's a 10-minute walk uphill or tram "
            "28. Buy a Navegante card at the airport station.",
            "U: brilliant, thank you",
        ],
        [{"thumbs": 1, "after": 2}],
    ),
    (
        "hannah",
        6,
        "13:22",
        GPT,
        [
            "U: After Lisbon we want to go on to Paris and London by train with an Interrail pass. Does the pass "
            "cover the Eurostar?",
            "A: Yes, Interrail covers the Eurostar and you can just board with your pass.",
            "U: hm, a friend said you need a reservation",
            "A: Your friend is right. Interrail passes are valid on Eurostar, but a pass-holder reservation is "
            "compulsory and costs extra (from about €30 in standard class), and pass-holder seats are limited, "
            "so book early.",
        ],
        [
            {
                "i": 1,
                "correction": "Interrail is valid on Eurostar only with a compulsory, paid pass-holder reservation "
                "(limited seats); you cannot just board.",
                "after": 10,
            }
        ],
    ),
    (
        "hannah",
        10,
        "18:03",
        GPT,
        [
            "U: Update: booked the Eurostar reservation, it was €30 like you said. Train from Lisbon to Paris "
            "next: is there a direct one?",
            "A: There's no direct train. The usual route is Lisbon to Porto or Vigo, then up through Spain to "
            "Madrid or Barcelona and across to Paris by TGV; it takes about 2 days, or fly Lisbon-Paris and "
            "start the rail part in Paris.",
            "U: 2 days is too long, we'll fly. Thanks for being straight about it",
        ],
        [{"rating": 4, "after": 2}],
    ),
    (
        "hannah",
        14,
        "07:40",
        GPT,
        [
            "U: what's the baggage allowance on TAP economy lisbon to paris?",
            "A: It depends on the fare. TAP's Discount fare includes only a small personal item; Classic and "
            "above include a 23 kg checked bag. Check your booking under Manage Booking.",
        ],
        [],
    ),
    (
        "hannah",
        30,
        "21:15",
        GPT,
        [
            "U: Back home now. The trip was great, thanks for the help with trains and the metro tip. One "
            "thing: I'd have liked to know about the Navegante card top-up limit earlier.",
            "A: Glad it went well! Noted about Navegante: the reusable card can hold one type of ticket at a "
            "time, which catches a lot of visitors out.",
        ],
        [{"rating": 4, "comment": "trip report", "after": 1}],
    ),
    # -- david: self-employed, US taxes ----------------------------------------------------------
    (
        "david",
        2,
        "07:55",
        GPT,
        [
            "U: I'm a self-employed graphic designer in Ohio, filing Schedule C. When is the third quarterly "
            "estimated tax payment due this year?",
            "A: The third-quarter estimated payment is due October 15.",
            "U: the IRS site says September 15??",
            "A: You're right, I mixed it up with the extended filing deadline. For individuals the 2026 "
            "estimated-tax dates are April 15, June 15, September 15 and January 15 of the next year. Pay Q3 by "
            "September 15 to avoid an underpayment penalty.",
            "U: ok thank god I checked",
        ],
        [
            {
                "i": 1,
                "thumbs": -1,
                "correction": "Q3 estimated tax for individuals is due September 15, not October 15 (October 15 "
                "is the extended return deadline). Dates: April 15, June 15, September 15, January 15.",
                "after": 3,
            }
        ],
    ),
    (
        "david",
        5,
        "20:10",
        GPT,
        [
            "U: Can I deduct my home office? It's a spare room, about 120 sq ft, used only for work.",
            "A: Yes, if it's used regularly and exclusively for your business. The simplified method gives $5 per "
            "square foot up to 300 sq ft, so 120 sq ft = $600. The regular method (actual expenses times the "
            "business share of the home) can be larger but needs more records.",
            "U: great, simplified it is",
        ],
        [{"thumbs": 1, "after": 2}],
    ),
    (
        "david",
        9,
        "12:34",
        GPT,
        [
            "U: I drive from home to a coworking space most days. Can I deduct that mileage?",
            "A: Yes, business mileage is deductible at the IRS standard rate, so keep a log of those trips.",
            "U: Are you sure? My accountant said commuting isn't deductible.",
            "A: Your accountant is right. Driving from home to a regular place of work is commuting and not "
            "deductible, even for the self-employed. Trips from there to clients or suppliers are deductible. "
            "If your home office is your principal place of business, trips from home to other work locations "
            "count as business mileage.",
        ],
        [
            {
                "i": 1,
                "correction": "Commuting from home to a regular workplace (e.g. a coworking space) is not "
                "deductible. Trips between work locations, or from a home office that is the principal place of "
                "business, are.",
                "after": 2880,
            }
        ],
    ),
    (
        "david",
        16,
        "09:05",
        GPT,
        [
            "U: Paid my Q3 estimate on September 14, no penalty notice. How much should I set aside next year "
            "for self-employment tax?",
            "A: Self-employment tax is 15.3% (12.4% Social Security + 2.9% Medicare) on 92.35% of net earnings. "
            "Add your income tax bracket on top; many freelancers set aside 25-30% of profit to be safe.",
            "U: thanks, very clear",
        ],
        [{"rating": 5, "after": 2}],
    ),
    (
        "david",
        23,
        "17:48",
        GPT,
        [
            "U: is a new laptop for work deductible all at once?",
            "A: Usually yes: with the de minimis safe harbor you can expense items up to $2,500 each, and "
            "Section 179 lets you expense larger equipment in the year you buy it instead of depreciating it.",
            "U: great, bought a $2,100 one",
        ],
        [],
    ),
    # -- leo: 11th grade, calculus -----------------------------------------------------------------
    (
        "leo",
        1,
        "16:45",
        GPT,
        [
            "U: im in 11th grade, what's the derivative of x^2 sin x",
            "A: The derivative is 2x cos x.",
            "U: my teacher said you need the product rule?",
            "A: Yes, sorry. With the product rule (uv)' = u'v + uv', u = x^2 and v = sin x:\n\nd/dx [x^2 sin x] "
            "= 2x sin x + x^2 cos x.",
            "U: ohh ok that makes sense now",
        ],
        [
            {
                "i": 1,
                "thumbs": -1,
                "correction": "Product rule: d/dx[x^2 sin x] = 2x sin x + x^2 cos x.",
                "after": 2,
            },
            {"i": 3, "thumbs": 1, "after": 3},
        ],
    ),
    (
        "leo",
        3,
        "17:20",
        GPT,
        [
            "U: can you explain the chain rule simply? we haven't done anything fancy yet, keep it basic pls",
            "A: The chain rule is for a function inside a function. Differentiate the outside, keep the inside "
            "as it is, then multiply by the derivative of the inside. Example: (3x + 1)^5 -> 5(3x + 1)^4 * 3 = "
            "15(3x + 1)^4.",
            "U: thanks!! that example helped a lot",
        ],
        [{"rating": 5, "after": 2}],
    ),
    (
        "leo",
        4,
        "18:02",
        GPT,
        [
            "U: derivative of sin(x^2)?",
            "A: Use the chain rule: the outside is sin, the inside is x^2. cos(x^2) * 2x = 2x cos(x^2).",
            "U: yay I got the same",
        ],
        [],
    ),
    (
        "leo",
        8,
        "19:30",
        GPT,
        [
            "U: how do I integrate x e^x",
            "A: Substitute u = e^x, then the integral becomes u du, which gives e^(2x)/2 + C.",
            "U: that doesn't seem right, if I differentiate it I don't get x e^x",
            "U: how do you integrate x times e^x, like step by step",
            "A: Use integration by parts, ∫u dv = uv - ∫v du, with u = x (so du = dx) and dv = e^x dx (so v = "
            "e^x):\n\n∫x e^x dx = x e^x - ∫e^x dx = x e^x - e^x + C = (x - 1)e^x + C.\n\nCheck: the derivative "
            "of (x - 1)e^x is e^x + (x - 1)e^x = x e^x.",
            "U: ok this one checks out",
        ],
        [
            {
                "i": 1,
                "correction": "Integration by parts with u = x, dv = e^x dx: ∫x e^x dx = (x - 1)e^x + C.",
                "after": 4,
            }
        ],
    ),
    (
        "leo",
        11,
        "20:05",
        GPT,
        [
            "U: what's the limit of sin(x)/x as x goes to 0",
            "A: It's 0, because sin(0) = 0.",
        ],
        [{"thumbs": -1, "correction": "The limit of sin(x)/x as x -> 0 is 1, not 0 (0/0 form).", "after": 30}],
    ),
    (
        "leo",
        12,
        "16:10",
        GPT,
        [
            "U: lim sin(x)/x as x -> 0, yesterday you said 0 but my book says 1??",
            "A: Your book is right, the limit is 1. Plugging in x = 0 gives 0/0, which is undefined, not 0. "
            "You can see it from the squeeze theorem, or from sin x ≈ x for small x, so sin(x)/x ≈ 1.",
            "U: ok thanks",
        ],
        [],
    ),
    (
        "leo",
        18,
        "15:55",
        GPT,
        [
            "U: I got 18/20 on the derivatives quiz!! the product rule one was on it",
            "A: Congratulations! That's a great score. Want a few practice problems on the quotient rule for the "
            "next unit?",
            "U: yes pls, 3 easy ones",
            "A: 1. d/dx [x / (x + 1)]\n2. d/dx [sin x / x]\n3. d/dx [(x^2 + 1) / x^3]\n\nUse (u/v)' = (u'v - "
            "uv') / v^2. Answers: 1/(x + 1)^2; (x cos x - sin x)/x^2; -(x^2 + 3)/x^4.",
            "U: awesome thanks",
        ],
        [{"rating": 5, "after": 6}],
    ),
    (
        "leo",
        24,
        "17:33",
        GPT,
        [
            "U: explain what an integral actually is, not how to do it",
            "A: An integral adds up infinitely many tiny pieces. To find the area under a curve, slice it into "
            "thin rectangles of width dx and height f(x), add their areas, and let the width shrink to zero. The "
            "definite integral from a to b is that limit.",
        ],
        [],
    ),
    # -- nina: Trellis customer support ---------------------------------------------------------
    (
        "nina",
        2,
        "10:41",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: Our webhook to Slack stopped firing yesterday. Where do I see the delivery log?",
            "A: You can find it under Settings > Billing > Invoices.",
            "U: That's not what I asked. I need the webhook delivery log, not invoices.",
            "A: Sorry. Webhook deliveries are under Settings > Developers > Webhooks; click the endpoint to see "
            "recent deliveries with status codes and retry them.",
            "U: found it, the endpoint returned 410. Slack must have revoked the URL",
        ],
        [
            {
                "i": 2,
                "thumbs": -1,
                "correction": "The webhook delivery log is under Settings > Developers > Webhooks (click the "
                "endpoint).",
                "after": 2,
            },
            {"i": 4, "thumbs": 1, "after": 6},
        ],
    ),
    (
        "nina",
        2,
        "11:05",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: I created a new Slack webhook URL. Do I need to rotate the signing secret too? Current key for "
            "our integration is sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a if that matters.",
            "A: No need to rotate the signing secret when you change the target URL; just edit the endpoint in "
            "Settings > Developers > Webhooks. Please don't paste API keys in chat: since you have, revoke that "
            "key under Settings > Developers > API keys and create a new one.",
            "U: good point, revoked it. thanks",
        ],
        [{"rating": 5, "after": 3}],
    ),
    (
        "nina",
        7,
        "09:14",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: How do I export all tasks of a project to CSV?",
            "A: Open the project, click the gear icon, then Export > CSV. The file includes tasks, assignees, "
            "due dates and custom fields.",
            "U: great, thanks",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    (
        "nina",
        11,
        "14:30",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: A teammate says the password reset email never arrives. Her address is j.ortega@acme-example.com",
            "A: Password reset emails can take up to 24 hours to arrive.",
        ],
        [{"thumbs": -1, "comment": "not true, they arrive in a minute; it's usually the spam filter", "after": 20}],
    ),
    (
        "nina",
        11,
        "14:52",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: Password reset email isn't arriving for a user on our workspace. What should we check?",
            "A: Reset emails are sent within a minute. Ask her to check spam and quarantine, and ask your IT to "
            "allow no-reply@trellis.example. An admin can also send a new reset link from Admin > Members > "
            "... > Reset password; links expire after 30 minutes.",
            "U: it was the quarantine. all good",
        ],
        [{"thumbs": 1, "after": 15}],
    ),
    (
        "nina",
        17,
        "16:08",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: Can guests see private projects?",
            "A: Guests can see any project in the workspace.",
            "U: that would be a huge security problem. is that really true",
            "A: I should correct that: guests only see projects they are explicitly invited to. Private projects "
            "are invisible to guests unless a project admin adds them.",
        ],
        [
            {
                "i": 2,
                "correction": "Guests only see projects they are explicitly invited to; private projects are "
                "invisible to guests unless added by a project admin.",
                "after": 3,
            }
        ],
    ),
    (
        "nina",
        24,
        "11:11",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: where do I change the webhook retry policy",
            "A: Retry policies are under Settings > Billing.",
            "U: ugh, again? it's the developers section",
        ],
        [],
    ),
    (
        "nina",
        31,
        "10:27",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: Does Trellis have an API rate limit?",
            "A: Yes: 100 requests per minute per API key, with a burst of 20. Responses include X-RateLimit-"
            "Remaining, and a 429 carries Retry-After.",
            "U: thanks, exactly what I needed",
        ],
        [{"rating": 5, "after": 1}],
    ),
    # -- tom: backend dev, PostgreSQL 15, also pandas ---------------------------------------------
    (
        "tom",
        4,
        "13:15",
        GPT,
        [
            "U: We use PostgreSQL 15. How do I number rows within each department by salary, highest first?",
            "A: Use a window function:\n\n```sql\nSELECT name, department, salary,\n       ROW_NUMBER() OVER "
            "(PARTITION BY department ORDER BY salary DESC) AS rank_in_dept\nFROM employees;\n```\n\nUse "
            "`RANK()` instead if ties should share a number.",
            "U: perfect",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    (
        "tom",
        10,
        "15:40",
        GPT,
        [
            "U: how do I add rows to a pandas DataFrame in a loop? I'm collecting metrics every minute",
            "A: Use `df = df.append(row, ignore_index=True)` inside the loop.",
            "U: I'm on pandas 2.2, append doesn't exist",
            "A: Right, it was removed in pandas 2.0. Keep a list of dicts and build the frame with "
            "`pd.DataFrame(rows)` when you need it, or `pd.concat` two frames.",
        ],
        [
            {
                "i": 1,
                "thumbs": -1,
                "correction": "DataFrame.append is gone in pandas 2.x; append dicts to a list and build "
                "pd.DataFrame(rows) once (or pd.concat).",
                "after": 1,
            }
        ],
    ),
    (
        "tom",
        12,
        "09:58",
        GPT,
        [
            "U: Our nightly job does `SELECT ... WHERE created_at::date = CURRENT_DATE - 1` on a 200M row table "
            "and it's slow even with an index on created_at.",
            "A: The cast stops Postgres from using the index. Compare the raw column with a range instead:\n\n"
            "```sql\nWHERE created_at >= CURRENT_DATE - 1\n  AND created_at <  CURRENT_DATE\n```",
            "U: will try tonight",
        ],
        [],
    ),
    (
        "tom",
        14,
        "08:47",
        GPT,
        [
            "U: tried the range query, still failing after your suggestion: it still does a seq scan",
            "A: Check the column type. If created_at is `timestamptz`, CURRENT_DATE - 1 is a date and gets "
            "converted in the session time zone, which is fine; but if the planner still prefers a seq scan, "
            "run `ANALYZE` on the table, and check with `EXPLAIN (ANALYZE, BUFFERS)`: yesterday may simply be a "
            "large fraction of a table that only holds a few weeks of data.",
            "U: ANALYZE fixed it. stats were stale after the bulk load",
        ],
        [{"rating": 4, "after": 40}],
    ),
    (
        "tom",
        21,
        "14:25",
        GPT,
        [
            "U: in postgres how do I show 'n/a' when a text column is null",
            "A: `SELECT IFNULL(nickname, 'n/a') FROM users;`",
            "U: function ifnull does not exist. this is postgres",
            "A: Sorry, IFNULL is MySQL. In PostgreSQL: `SELECT COALESCE(nickname, 'n/a') FROM users;`",
        ],
        [{"i": 1, "correction": "PostgreSQL uses COALESCE(nickname, 'n/a'); IFNULL does not exist.", "after": 2}],
    ),
    (
        "tom",
        28,
        "16:00",
        GPT,
        [
            "U: What's the difference between a CTE and a subquery performance-wise in Postgres 15?",
            "A: Since PostgreSQL 12, a CTE that is referenced once and has no side effects is inlined like a "
            "subquery, so performance is usually the same. Add `MATERIALIZED` to force the old behaviour "
            "(compute once, reuse) or `NOT MATERIALIZED` to force inlining.",
            "U: good to know, thanks",
        ],
        [{"thumbs": 1, "after": 2}],
    ),
    # -- rosa: freelance translator, California --------------------------------------------------
    (
        "rosa",
        7,
        "10:30",
        GPT,
        [
            "U: I'm a freelance translator in California, sole proprietor. When's my next estimated tax payment due?",
            "A: The next federal estimated payment (Q3) is due October 15.",
            "U: really? I thought it was in September",
        ],
        [
            {
                "thumbs": -1,
                "correction": "Federal Q3 estimated tax is due September 15. California's schedule differs: "
                "30% in April, 40% in June, nothing in September, 30% in January.",
                "after": 5,
            }
        ],
    ),
    (
        "rosa",
        8,
        "09:12",
        GPT,
        [
            "U: Can you make me a simple invoice template? Name Rosa Delgado, phone (415) 555-0134, paid by bank "
            "transfer, 30 days terms.",
            "A: INVOICE #____\nRosa Delgado, Translation Services | (415) 555-0134\nBill to: ____\nDate: ____  "
            "Due: 30 days from date\n\nDescription | Words | Rate | Amount\n____ | ____ | ____ | ____\n\nTotal: "
            "____\nPayment by bank transfer. Thank you for your business.",
            "U: thank you, that's clean",
        ],
        [{"rating": 4, "after": 2}],
    ),
    (
        "rosa",
        15,
        "19:20",
        GPT,
        [
            "U: I prefer short answers. Is my translation software subscription deductible?",
            "A: Yes: software used for your business is a deductible expense on Schedule C.",
            "U: thanks",
        ],
        [],
    ),
    (
        "rosa",
        22,
        "08:35",
        GPT,
        [
            "U: I got paid 1,200 EUR by a client in Spain. How do I report it?",
            "A: Report it as income in US dollars on Schedule C, converted at the exchange rate on the day you "
            "received it (or the IRS yearly average rate, applied consistently).",
            "U: great, thanks",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    # -- amira: frontend dev, React 18 + TypeScript -------------------------------------------------
    (
        "amira",
        3,
        "11:00",
        GPT,
        [
            "U: I'm on React 18 with TypeScript. Why does my useEffect run twice on mount?",
            "A: In development, React 18's StrictMode mounts, unmounts and remounts every component to surface "
            "effects that don't clean up. It only happens in dev; in production it runs once. Make the effect "
            "idempotent or return a cleanup function.",
            "U: ahh StrictMode, that's it. thanks!",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    (
        "amira",
        6,
        "15:17",
        GPT,
        [
            "U: how do I fetch data once when a function component mounts?",
            "A: Use `componentWillMount()` and call fetch there.",
            "U: that's a class component lifecycle, and it's deprecated. I asked about function components",
            "U: fetch data on mount in a React 18 function component with TypeScript?",
            "A: Use `useEffect` with an empty dependency array and an abort flag:\n\n```tsx\nuseEffect(() => {\n"
            "  const ctrl = new AbortController();\n  fetch('/api/items', { signal: ctrl.signal })\n    .then(r => "
            "r.json())\n    .then((data: Item[]) => setItems(data))\n    .catch(() => {});\n  return () => "
            "ctrl.abort();\n}, []);\n```\n\nFor anything bigger, a data library like TanStack Query handles "
            "caching and retries.",
            "U: that's it, thanks",
        ],
        [
            {
                "i": 1,
                "thumbs": -1,
                "correction": "Function components have no componentWillMount (a deprecated class lifecycle). Use "
                "useEffect(() => { ... }, []) with an AbortController cleanup.",
                "after": 2,
            }
        ],
    ),
    (
        "amira",
        9,
        "10:44",
        GPT,
        [
            "U: is the useEffect cleanup only called on unmount?",
            "A: Yes, the cleanup function only runs when the component unmounts.",
            "U: hm, but my cleanup logs every time userId changes",
            "A: Right, I was wrong: the cleanup runs before the effect re-runs because a dependency changed, "
            "and once more on unmount. With `[userId]` as dependencies, each change cleans up the previous "
            "effect first.",
        ],
        [
            {
                "i": 1,
                "correction": "The cleanup runs before every re-run of the effect (when a dependency changes) and "
                "on unmount, not only on unmount.",
                "after": 3,
            }
        ],
    ),
    (
        "amira",
        13,
        "13:36",
        GPT,
        [
            "U: type for an onChange handler on an input in TS?",
            "A: `(e: React.ChangeEvent<HTMLInputElement>) => void`, e.g. `const onChange = (e: "
            "React.ChangeEvent<HTMLInputElement>) => setName(e.target.value);`",
            "U: ty",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    (
        "amira",
        20,
        "17:02",
        GPT,
        [
            "U: my list re-renders every item when one changes. 500 items. ideas?",
            "A: Wrap the item component in `React.memo`, give each item a stable `key` (its id, not the index), "
            "and make sure the props you pass are stable: memoise callbacks with `useCallback` so a new function "
            "isn't created each render. For 500+ rows, also consider virtualisation (react-window).",
            "U: memo + useCallback did it, from 180ms to 12ms per update",
        ],
        [{"rating": 5, "after": 45}],
    ),
    (
        "amira",
        25,
        "09:20",
        GPT,
        [
            "U: what's the difference between useMemo and useCallback",
            "A: useCallback(fn, deps) is useMemo(() => fn, deps): useCallback memoises a function, useMemo "
            "memoises any computed value.",
        ],
        [],
    ),
    # -- sam: small bakery owner, gluten-free partner; cooking + business ---------------------------
    (
        "sam",
        5,
        "06:50",
        GPT,
        [
            "U: My partner is gluten-free. Can I use regular oats in her granola?",
            "A: Yes, oats are naturally gluten-free, so regular oats are fine.",
            "U: her doctor said only certified gluten-free oats",
            "A: Her doctor is right. Oats don't contain gluten themselves, but regular oats are usually "
            "cross-contaminated with wheat or barley in the field and the mill. Use oats labelled certified "
            "gluten-free.",
        ],
        [
            {
                "i": 1,
                "thumbs": -1,
                "correction": "For someone who is gluten-free, use certified gluten-free oats: regular oats are "
                "commonly cross-contaminated with wheat or barley.",
                "after": 2,
            }
        ],
    ),
    (
        "sam",
        9,
        "07:15",
        GPT,
        [
            "U: I need to scale a bread recipe from 1 loaf to 12 for the bakery. Original: 500 g flour, 350 g "
            "water, 10 g salt, 7 g yeast.",
            "A: Times 12: 6 kg flour, 4.2 kg water, 120 g salt, 84 g instant yeast. For a batch that size you "
            "can drop the yeast by about 10-15% (to ~72 g) since a large dough stays warmer and ferments faster.",
            "U: that's helpful, especially the yeast note",
        ],
        [{"rating": 5, "after": 3}],
    ),
    (
        "sam",
        15,
        "06:40",
        GPT,
        [
            "U: american customer asked for the banana bread recipe in cups. 250 g flour is how many cups?",
            "A: 250 g of all-purpose flour is 1 cup.",
        ],
        [],
    ),
    (
        "sam",
        15,
        "06:52",
        GPT,
        [
            "U: wait, 250 g flour = 1 cup? that sounds way off. how many cups is 250 g of all-purpose flour",
            "A: About 2 cups: a cup of all-purpose flour is roughly 120-125 g, so 250 g is 2 cups (spooned and "
            "levelled).",
            "U: thanks, that matches my scale",
        ],
        [{"i": 1, "thumbs": 1, "after": 2}],
    ),
    (
        "sam",
        22,
        "08:00",
        GPT,
        [
            "U: Write a short sign for the counter saying our sourdough is made with no commercial yeast and "
            "takes 36 hours.",
            'A: "Our sourdough: flour, water, salt and time. No commercial yeast, just a wild starter and a '
            '36-hour slow fermentation for a deeper flavour and a crackling crust."',
            "U: love it!",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    (
        "sam",
        29,
        "07:30",
        GPT,
        [
            "U: a customer with coeliac disease asked if our spelt bread is safe for her",
            "A: Spelt is an ancient grain and is gluten-free, so it should be fine.",
            "U: no!! spelt is a type of wheat. that's dangerous advice",
        ],
        [
            {
                "thumbs": -1,
                "correction": "Spelt is a type of wheat and contains gluten; it is not safe for people with coeliac "
                "disease.",
                "after": 1,
            }
        ],
    ),
    # -- more priya / tom / leo / david sessions for returning-user depth --------------------------
    (
        "tom",
        33,
        "10:10",
        GPT,
        [
            "U: the metrics collector from a few weeks ago: list of dicts + pd.DataFrame(rows) works great, "
            "memory is flat now",
            "A: Good to hear. If the list grows all day, flush it to Parquet every hour and start a new list to "
            "keep memory bounded.",
        ],
        [{"rating": 5, "after": 1}],
    ),
    (
        "leo",
        33,
        "18:40",
        GPT,
        [
            "U: whats the derivative of x^3 cos x",
            "A: Product rule with u = x^3, v = cos x: 3x^2 cos x - x^3 sin x.",
            "U: yep matches mine",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    (
        "david",
        34,
        "08:20",
        GPT,
        [
            "U: When's the Q4 estimated payment due? Don't want a repeat of the Q3 confusion.",
            "A: Q4 is due January 15 of next year. You can skip it if you file your return and pay everything by "
            "January 31.",
            "U: great, thanks for the tip",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    (
        "marco",
        35,
        "18:55",
        GPT,
        [
            "U: vegetarian lasagne for 6, metric, please",
            "A: Vegetarian lasagne for 6:\n- 12 lasagne sheets (about 250 g)\n- 500 g ricotta, 150 g grated "
            "vegetarian hard cheese, 250 g mozzarella\n- 400 g spinach, 2 courgettes, 1 aubergine\n- 700 g "
            "passata, 2 garlic cloves, basil\n\nRoast the diced vegetables at 200°C for 25 min, wilt the spinach, "
            "layer sauce-sheets-vegetables-ricotta three times, top with mozzarella and bake at 180°C for 40 min.",
            "U: perfect, and thanks for the veggie cheese",
        ],
        [{"rating": 5, "after": 2}],
    ),
    (
        "priya",
        36,
        "13:05",
        GPT,
        [
            "U: pandas: how do I add a single summary row at the bottom of a DataFrame?",
            "A: Use `df.loc[len(df)] = summary_values` for one row on a default RangeIndex, or build a one-row "
            "frame and `pd.concat([df, summary_df], ignore_index=True)`.",
            "U: nice, loc works",
        ],
        [],
    ),
    (
        "amira",
        37,
        "16:30",
        GPT,
        [
            "U: how do I debounce a search input in React 18?",
            "A: Keep the input value in state, and derive a debounced value with a timer in useEffect:\n\n```tsx\n"
            "const [q, setQ] = useState('');\nconst [debounced, setDebounced] = useState(q);\nuseEffect(() => {\n"
            "  const t = setTimeout(() => setDebounced(q), 300);\n  return () => clearTimeout(t);\n}, [q]);\n```\n"
            "\nThe cleanup cancels the previous timer each time q changes.",
            "U: clean. thanks",
        ],
        [{"thumbs": 1, "after": 2}],
    ),
    (
        "hannah",
        38,
        "12:00",
        GPT,
        [
            "U: planning a weekend in Amsterdam in December. I'm British, do I need the ETIAS thing?",
            "A: Not yet as of this year: ETIAS has not started, so UK visitors only need a valid passport (issued "
            "within 10 years, valid 3 months after departure). The EES entry-exit system takes fingerprints and "
            "a photo at the border instead of a stamp.",
            "U: ok good, thanks",
        ],
        [],
    ),
    (
        "nina",
        39,
        "15:45",
        SUPPORT,
        [
            "S: " + SUPPORT_SYSTEM,
            "U: How do I give an API key read-only access?",
            'A: When creating the key under Settings > Developers > API keys, choose the scope "read". '
            "Existing keys can't change scope, so create a new read-only key and revoke the old one.",
            "U: done, thank you",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
    (
        "rosa",
        40,
        "09:50",
        GPT,
        [
            "U: short answer please: can I deduct a translation conference in Madrid?",
            "A: Yes, if it's mainly for your business: registration, airfare and lodging are deductible, and "
            "meals at 50%. Sightseeing days are not.",
            "U: great, thanks",
        ],
        [{"thumbs": 1, "after": 1}],
    ),
]


def _minutes(user: str, k: int) -> int:
    """A small, deterministic gap between turns (30-150 s), different per user and turn."""
    return 30 + (sum(map(ord, user)) * 7 + k * 37) % 121


def build() -> list[dict]:
    seq: dict[str, int] = {}
    out = []
    for user, day, hhmm, model, turns, feedback in CONVERSATIONS:
        hh, mm = map(int, hhmm.split(":"))
        start = START + timedelta(days=day, hours=hh, minutes=mm)
        seq[user] = seq.get(user, 0) + 1
        t = start
        messages = []
        for k, turn in enumerate(turns):
            role = {"U": "user", "A": "assistant", "S": "system"}[turn[0]]
            text = turn[3:]
            if k:
                t += timedelta(seconds=_minutes(user, k) if role == "user" else 2 + len(text) // 80)
            m = {"role": role, "content": text, "timestamp": t.isoformat().replace("+00:00", "Z")}
            if role == "assistant":
                m["latency_ms"] = 400 + (len(text) * 13) % 2600
            messages.append(m)
        rec: dict = {
            "user": user,
            "session_id": f"{user}-{seq[user]:03d}",
            "timestamp": start.isoformat().replace("+00:00", "Z"),
            "model": model,
            "messages": messages,
        }
        fbs = []
        for fb in feedback:
            d = {k: v for k, v in fb.items() if k not in ("i", "after")}
            if "i" in fb:
                assert messages[fb["i"]]["role"] == "assistant", (user, day, fb)
                d = {"message_index": fb["i"], **d}
            d["timestamp"] = (start + timedelta(minutes=fb.get("after", 1))).isoformat().replace("+00:00", "Z")
            fbs.append(d)
        if fbs:
            rec["feedback"] = fbs
        out.append(rec)
    out.sort(key=lambda r: (r["timestamp"], r["session_id"]))
    return out


def main() -> None:
    records = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    n_msgs = sum(len(r["messages"]) for r in records)
    n_fb = sum(len(r.get("feedback", [])) for r in records)
    users = sorted({r["user"] for r in records})
    print(f"wrote {OUT}: {len(records)} conversations, {n_msgs} messages, {n_fb} feedback, {len(users)} users")


if __name__ == "__main__":
    main()
