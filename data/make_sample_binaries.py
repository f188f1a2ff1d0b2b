#!/usr/bin/env python3
"""Write the binary and non-UTF-8 files of the bundled sample corpus.

Deterministic: running it twice produces byte-identical files.
Dependencies: the standard library and pyarrow (for the parquet file).

Files written (relative to data/sample/):
  kb/articles.parquet            knowledge-base articles (article_id, title, text)
  manuals/driver-app-guide.pdf   2-page PDF 1.4, hand-written, Helvetica Type1
  junk/latin1-notes.txt          Latin-1 text, NOT valid UTF-8 (deliberate junk)
  junk/logo.png                  tiny valid PNG (unsupported format, deliberate junk)
  junk/corrupt.pdf               "%PDF-" header followed by garbage (deliberate junk)
  junk/binary.txt                text file containing NUL bytes (deliberate junk)

Everything here is fictional: Kestrel Freight Cloud is an invented company.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "sample"

# ---------------------------------------------------------------------------
# Knowledge-base articles
# ---------------------------------------------------------------------------

KB_ARTICLES: list[tuple[str, str, str]] = [
("KB-0001", "Getting started with the Tracking API", """\
The Kestrel Tracking API is a REST API served from api.kestrel-freight.example.com. The current version is v2, and every path starts with /v2. This article walks through the first steps of an integration.

Step 1: create a key. A tenant admin creates API keys in the console under Settings > API keys. Live keys start with kf_live_ and read and write real shipment data. Test keys start with kf_test_ and only see the sandbox. The full key is shown once, so store it in your secrets manager immediately.

Step 2: authenticate. Send the key in the Authorization header as a bearer token. Requests without a valid key receive HTTP 401. Requests with a revoked key receive error KF-E1201.

Step 3: create a shipment. POST /v2/shipments with the carrier, the tracking number, the origin and destination addresses, and your own order reference, for example ORD-2026-000123. The response contains the Kestrel shipment ID, a UUID, which you use for all later calls.

Step 4: receive updates. Do not poll GET /v2/shipments/{id} in a loop. Subscribe to webhooks instead: shipment.picked_up, shipment.out_for_delivery, shipment.delivered and shipment.exception cover most needs, and shipment.updated fires whenever the ETA changes by more than 5 minutes.

Step 5: handle errors. Respect HTTP 429 responses (error KF-E4290) and their Retry-After header, and use exponential backoff with jitter for 5xx errors. Every response includes a request ID; include it when you contact support.

Limits depend on the plan: Starter 10, Growth 50 and Enterprise 200 requests per second. Bulk work should use the batch endpoints, which accept up to 500 shipments per request."""),
("KB-0002", "Understanding Kestrel error codes", """\
Every error returned by Kestrel services carries a code of the form KF-Ennnn. The first digit after the E tells you which area the error belongs to. This article lists the codes customers meet most often.

1xxx: shipments, sync and authentication of drivers.
- KF-E1042, shipment sync stalled. A carrier connector has not advanced for more than 15 minutes. Reconnect the carrier if the credentials were rejected; otherwise support can rewind the sync cursor.
- KF-E1107, driver session expired or device not registered.
- KF-E1108, too many one-time code attempts; 15-minute lockout.
- KF-E1110, driver app version below the minimum of 4.6.0.
- KF-E1201, API key revoked.

2xxx: warehouse and DockLink.
- KF-E2001, scanner heartbeat missing. The dock's DockLink agent has missed three heartbeats (90 seconds).

3xxx: billing.
- KF-E3010, invoice generation failed, usually because of a missing tax profile or missing usage records.

4xxx: client errors on the API.
- KF-E4290, rate limit exceeded, returned with HTTP 429 and a Retry-After header.

5xxx: delivery to customer systems.
- KF-E5003, webhook delivery failed. Your endpoint returned an error or timed out; the event is retried 8 times over 24 hours.

Error codes are stable: we never reuse a code for a different meaning, so you can safely build alerting or automatic handling on them. New codes are announced in the API changelog."""),
("KB-0003", "Choosing between webhooks and polling", """\
Many first integrations check shipments by calling GET /v2/shipments/{id} every few seconds. This is called polling. It works for a handful of shipments, but it does not scale, and it is the most common cause of rate-limit errors (KF-E4290).

Consider a customer with 2,000 open shipments who polls each one every 30 seconds. That is about 67 requests per second, above the Growth limit of 50, and almost every response says nothing has changed. The same customer using webhooks receives only the events that actually happen, perhaps a few per shipment per day.

Webhooks are HTTPS POST requests that Kestrel sends to an endpoint you own. Each request is signed with the Kestrel-Signature header, an HMAC-SHA256 of the raw body computed with your endpoint's signing secret. Your endpoint must answer with a 2xx status within 10 seconds; do heavy processing asynchronously after acknowledging.

When to still poll:
- Once, after a webhook outage on your side, to reconcile the current state of open shipments.
- For a daily consistency check of a sample of shipments.
- In environments where you cannot expose an HTTPS endpoint; in that case poll the changes feed, GET /v2/shipments/changes?since=<cursor>, which returns all changes since your last call in one request.

Switching from polling to webhooks typically reduces API traffic by more than 95% and makes updates arrive faster, since events are pushed within seconds instead of waiting for the next poll."""),
("KB-0004", "Verifying webhook signatures", """\
Every webhook request from Kestrel includes a header called Kestrel-Signature. It lets you verify that the request really came from Kestrel and that the body was not changed on the way.

The header has the form t=1772450000,v1=<hex digest>. The value t is the Unix timestamp when the request was signed. The digest is an HMAC-SHA256, using your endpoint's signing secret as key, over the string made of the timestamp, a full stop, and the raw request body.

To verify a request:
1. Read the raw body bytes before any JSON parsing.
2. Split the header into t and v1.
3. Reject the request if t is more than 5 minutes away from your current time; this prevents replay attacks.
4. Compute HMAC-SHA256(secret, t + "." + raw_body) and hex-encode it.
5. Compare it to v1 with a constant-time comparison function.

Common mistakes:
- Computing the HMAC over re-serialised JSON. Frameworks often parse and re-encode the body, which changes whitespace and breaks the signature.
- Using the signing secret of a different endpoint. Each endpoint has its own secret, shown under Settings > Webhooks.
- Server clocks that are wrong by more than 5 minutes, which makes every request look like a replay.

Signing secrets can be rolled under Settings > Webhooks > Roll secret. During a 24-hour overlap, requests carry two v1 values, one for each secret, so you can deploy the new secret without rejecting events."""),
("KB-0005", "Webhook retries and the dead-letter queue", """\
Kestrel treats a webhook delivery as successful when your endpoint answers with any 2xx status within 10 seconds. Anything else, including redirects, 4xx and 5xx responses and timeouts, counts as a failure and is logged with error code KF-E5003.

Retry schedule. Failed deliveries are retried with exponential backoff: after about 1 minute, 5 minutes, 15 minutes, 1 hour, 2 hours, 4 hours, 8 hours and finally at 24 hours. That is 8 attempts over 24 hours.

Dead-letter queue. After the last attempt fails, the event moves to the dead-letter queue (DLQ). You can see and replay dead-lettered events under Settings > Webhooks > Failed deliveries for 7 days. Replays can be done one by one or in bulk, and they keep their original event IDs, so your handler can de-duplicate them.

Automatic disabling. If an endpoint fails for 72 hours in a row, Kestrel disables it and emails your tenant admins. Re-enable it in the console once it is fixed, then replay the dead-letter queue.

Isolation. When one endpoint fails heavily, our operations team may isolate it. Isolated endpoints are retried on a separate worker pool so that they do not delay deliveries to other customers. Isolation does not change the retry schedule and you do not need to do anything.

Ordering. Events for one shipment are delivered in order while your endpoint is healthy. After failures and retries, a newer event may arrive before an older one. Use the per-shipment sequence number to ignore stale events."""),
("KB-0006", "Carrier connectors and sync cursors", """\
A carrier connector links Kestrel to one carrier's systems. It fetches the carrier's tracking events, translates them into Kestrel events such as picked_up, in_transit, out_for_delivery and delivered, and attaches them to the right shipments. Connectors run inside the sync service on a schedule, usually every 2 to 5 minutes depending on the carrier.

Each connector remembers how far it has read with a sync cursor. The cursor is like a bookmark: on the next run, the connector asks the carrier only for events after the cursor. Cursors are stored per tenant and per connector.

When a connector stops advancing for more than 15 minutes while the carrier still has new events, the cursor is called stale and the console shows KF-E1042 (shipment sync stalled). Typical causes are:
1. Expired carrier credentials. Many carriers issue API credentials valid for 90 days. The connector page then shows "carrier credentials rejected". Reconnect the carrier under Integrations > Carriers.
2. A carrier outage. The connector resumes on its own when the carrier recovers.
3. A pagination or cursor problem at the carrier. Support fixes these by rewinding the cursor by one hour and resuming the connector.

Rewinding replays events that were already processed, but every event has a unique event_id and Kestrel ignores duplicates, so your timeline and your webhooks are not affected.

Manifests group the shipments handed to a carrier in one pickup. Sync progress is tracked per manifest, so the console can tell you exactly which pickup is missing carrier updates."""),
("KB-0007", "Setting up DockLink in a new warehouse", """\
DockLink is the Kestrel agent that connects warehouse barcode scanners to the platform. Setting up a new site usually takes less than an hour.

Requirements:
- A Windows 10/11 or Linux PC or gateway on the warehouse network that stays on during working hours.
- Outbound HTTPS from that machine to ingest.kestrel-freight.example.com on port 8443, without TLS inspection.
- Working DNS and automatic time synchronisation. A clock offset of more than 5 minutes blocks the connection.

Steps:
1. In the console, create the warehouse and its docks under Warehouses > Docks. Each dock is one loading bay or scanning station.
2. Download the DockLink installer (current version v2.14.3) and the generated scanner_config.yaml for the warehouse.
3. Install DockLink and copy scanner_config.yaml to C:\\ProgramData\\DockLink\\ on Windows or /etc/docklink/ on Linux.
4. Pair each scanner with its dock as described in the config file, giving each device the role inbound, outbound or audit.
5. Run docklink doctor. It checks DNS, the TLS handshake on port 8443 and the clock offset.
6. Scan a test parcel and check that the event appears in the console within a few seconds.

If the site uses a proxy, set proxy credentials with docklink proxy set-credentials so that they are stored encrypted instead of in plain text in the config file. Proxy authentication needs DockLink v2.12 or later.

Keep scanner_config.yaml in plain UTF-8 without a byte-order mark; some Windows editors add one, and the agent then refuses to start."""),
("KB-0008", "DockLink heartbeats, offline docks and the scan buffer", """\
DockLink sends a heartbeat to Kestrel every 30 seconds. If three heartbeats in a row are missing, that is after 90 seconds, the dock is shown as offline in the console and error KF-E2001 is raised. Your warehouse contacts can be notified by email when a dock goes offline; set this up under Warehouses > Notifications.

An offline dock does not stop the warehouse. DockLink keeps accepting scans and stores them in the local scan buffer, a file on the DockLink machine that holds up to 20,000 scans. When the connection returns, the buffer is uploaded in the original order, so shipment timelines stay correct. The console shows the buffer size per dock.

If the buffer fills up, stored scans are kept, but the scanners reject new scans with a triple beep. Work on that dock stops until the buffer drains. A buffer above 15,000 scans should therefore be treated as urgent.

Troubleshooting an offline dock:
1. Check that the DockLink machine is on and connected.
2. Run docklink doctor and read the result.
3. "TLS handshake failed" usually means a firewall or proxy is inspecting traffic on port 8443.
4. "clock skew" means the clock is more than 5 minutes off; enable automatic time sync.
5. If all checks pass, restart the service (systemctl restart docklink on Linux, Restart-Service DockLink on Windows).

For long internet outages, connecting the DockLink machine to a mobile hotspot is enough: DockLink uses little bandwidth."""),
("KB-0009", "Kestrel Driver app: device registration and login", """\
Drivers log in to the Kestrel Driver app with their phone number and a six-digit one-time code sent by SMS. The code is valid for 10 minutes. Before a driver can log in, a fleet manager must create the driver profile in the console under Fleet > Drivers, with the correct mobile number.

Device registration. The first successful login on a phone registers that phone to the driver. A driver can have at most two registered devices, for example a personal phone and a shared rugged device. When a driver changes phones, a fleet manager removes the old device under Fleet > Drivers > Devices. If a driver tries to log in on a third device, the app shows KF-E1107.

Sessions. After login, the session lasts 12 hours. Since version 4.8.2, the session renews silently if the app is opened in the last 30 minutes of the session, so drivers are not logged out during a delivery.

Lockouts. After five wrong codes, the driver is locked out for 15 minutes with KF-E1108. Support can clear a lockout for a driver who is about to start a shift.

Codes not arriving. The most common reasons are a wrong number in the driver profile, a phone with no signal, or a mobile network filtering short-code senders. Support can check the SMS delivery log for each driver.

Minimum version. Versions below 4.6.0 are blocked with KF-E1110; drivers must update from the App Store or Play Store."""),
("KB-0010", "Proof of delivery: photos, signatures and disputes", """\
Proof of delivery (POD) is the evidence that a parcel was handed over. In the Kestrel Driver app, the last step of each stop asks for a photo of the parcel at the door or with the recipient, the recipient's signature on the screen, and the recipient's name. The app adds the time and GPS position automatically.

Where to find it. POD appears in the console on the shipment page and, if you enable it, on the public tracking page. Webhook shipment.delivered events contain links to the photo and signature. Links expire after 24 hours; request a new link through the API if needed.

Safe-place deliveries. If the recipient is not present and the shipment allows it, the driver selects "Left in safe place", takes a photo and describes the location. No signature is captured.

Disputes. When a recipient says a parcel never arrived, open the POD in the console. Check the GPS position against the address, and the time against the recipient's statement. The geofence arrival event shows when the vehicle reached the address. You can export the POD as a PDF report under Shipment > Actions > Export POD for the carrier or insurer.

Retention. POD photos and signatures are kept for 13 months. Enterprise customers can shorten this to as little as 7 days under Settings > Data > Retention. Make sure this matches your own dispute window before shortening it.

Offline. POD captured without coverage is stored on the phone and uploaded with the offline queue."""),
("KB-0011", "How ETAs are calculated", """\
Kestrel shows an estimated time of arrival (ETA) for every shipment on a driver route and, where the carrier provides enough data, for carrier shipments too. ETAs are recalculated by the tracking workers each time a new GPS ping or carrier event arrives.

Inputs to the ETA:
- The vehicle's current position and speed from the Kestrel Driver app, sent every 15 seconds while driving.
- The remaining stops on the route, in the order set by the dispatcher.
- Historical travel times for each road segment at that time of day and day of week.
- The dwell time at each stop, meaning the time the vehicle spends stopped while the driver delivers. The default is 3 minutes.

Improving accuracy. The most common reason for optimistic ETAs is a dwell time that is too short. Deliveries to hospitals, offices with reception desks or construction sites often take 8 to 12 minutes. Set a custom dwell time per route or per location under Routes > Settings > Dwell time. Kestrel also learns dwell times per location after about 20 deliveries, if you enable "Learned dwell time".

Notifications. The tracking page always shows the latest ETA. Webhook shipment.updated fires when the ETA changes by more than 5 minutes, so your systems are not flooded with small changes.

When ETAs go stale. If the tracking workers fall behind, for example during an unusual peak, ETAs stop updating. Our operations team scales the workers automatically; check the status page if ETAs look frozen."""),
("KB-0012", "Geofences and arrival events", """\
A geofence is a virtual boundary around a location, defined by a pin on the map and a radius. Kestrel uses geofences to create arrival and departure events automatically from the driver's GPS position, so drivers do not need to tap "Arrived".

Default behaviour. Each delivery address gets a circular geofence with a 50-metre radius around the geocoded pin. When the phone enters the circle, Kestrel records an arrival event; when it leaves, a departure event. The time between the two is the measured dwell time.

When arrivals are missed:
- The address pin is in the wrong place, for example at the front of a large site while vans unload at the back.
- The radius is too small for the site.
- The phone's location permission is set to "While using the app" and the app was in the background. The app asks drivers for "Always" permission during shifts.

Fix pins and radii under Locations. For distribution centres and hospitals, radii of 150 to 300 metres work well. Avoid radii above 1 km, which trigger arrivals while the van is still on the road nearby.

Known issue: on iOS 16 the arrival notification to the driver can appear up to 30 seconds late. The arrival event itself has the correct time.

Geofences are also used for warehouse yards: when a van enters a warehouse geofence, the dock team sees it as "arriving" on the dock screen."""),
("KB-0013", "Understanding your invoice", """\
Kestrel invoices are created by the Ledger billing service on the first day of each month at 02:00 UTC and emailed to your billing contact. They are also available under Billing > Invoices. Invoice numbers look like INV-2026-03-0157: year, month and a sequence number.

An invoice has three parts:
1. Plan fee, billed in advance for the coming month.
2. Usage above the plan's included volume, billed in arrears for the previous month. Usage is counted as billable shipments (each shipment counts once, however many events it has) and API calls above the included volume.
3. Adjustments: prorations for plan changes and credit notes, for example SLA credits.

Prorations. When you upgrade in the middle of a month, the upgrade takes effect immediately and you are charged the difference for the remaining days. Downgrades take effect at the start of the next month.

Taxes. Tax is calculated from your tax profile: billing country, VAT or sales tax number and rate. Businesses in another EU country with a valid VAT number are invoiced with reverse charge. If your tax profile is missing, the invoice cannot be generated and is delayed (error KF-E3010).

Corrections. Issued invoices are never edited. If something is wrong, Finance issues a credit note that cancels or reduces the invoice, and a corrected invoice if needed.

Payment. Pay by card or by direct debit; add payment methods under Billing > Payment methods. Never send card numbers or bank details in a ticket."""),
("KB-0014", "Service credits and the SLA", """\
Growth and Enterprise plans include a Service Level Agreement. Growth commits to 99.9% monthly availability of the Tracking API and the tracking page. Enterprise commits to 99.95% and also covers webhook delivery and the driver app backend. Starter has no SLA.

How availability is measured. External probes in three regions test the API every minute. A minute is unavailable when more than 5% of requests fail with HTTP 5xx or time out. Client errors such as HTTP 401 or HTTP 429 (KF-E4290) do not count.

What 99.9% means in practice: about 43 minutes of downtime in a 30-day month. 99.95% allows about 22 minutes.

Credits:
- Below target but at least 99.0%: 10% of the monthly fee.
- Below 99.0% but at least 95.0%: 25%.
- Below 95.0%: 50%.

Claiming. Open a ticket within 30 days after the end of the month, with your tenant ID and the times you were affected. We check claims against incident records within 10 business days. Approved credits appear as a credit note on your next invoice.

Example. During incident INC-2311 on 11 March 2026, the Tracking API was unavailable for 52 minutes. A Growth customer with no other downtime that month had 99.88% availability and received a 10% credit.

Exclusions include announced maintenance (at least 5 days' notice, at most 4 hours per month), carrier and SMS provider outages, customer network problems and beta features."""),
("KB-0015", "Incident severity and what to expect from us", """\
When something breaks, our operations team opens an incident and assigns a severity. The severity decides how quickly we respond and how often we update you.

SEV1, critical: a full outage of the Tracking API or the driver app, data loss, or a security breach. We respond within 15 minutes, day and night, post the first status page update within 15 minutes and then update every 30 minutes. Enterprise customers also receive email updates.

SEV2, major: a core feature badly degraded for many customers, for example webhook deliveries delayed by more than 30 minutes or driver logins failing in one region. Response within 30 minutes, status updates every 60 minutes.

SEV3, minor: a problem for a few customers or one with a workaround, such as a single carrier connector stalled with KF-E1042. We respond within 4 business hours and keep you informed through your ticket.

SEV4, low: cosmetic issues with no real impact, handled the next business day.

After SEV1 and SEV2 incidents, we publish an incident report within 5 business days with the impact, the timeline, the root cause and what we are changing. Our internal postmortems are blameless.

How you can help: check status.kestrel-freight.example.com before opening a ticket during a widespread problem, and subscribe to it by email or SMS. When you do open a ticket, include request IDs, tenant ID and exact times in UTC."""),
("KB-0016", "Data retention and deletion", """\
Kestrel keeps data only as long as needed. The nightly purge job runs at 03:00 UTC and deletes data that has passed its retention period from the primary database, the replica and object storage.

Retention periods:
- GPS pings: 90 days.
- Tracking events and shipment history: 13 months.
- Proof-of-delivery photos and signatures: 13 months.
- Webhook delivery logs: 30 days; dead-letter queue replays: 7 days.
- Support tickets: 3 years after closure.
- Audit logs: 2 years.
- Invoices and credit notes: 7 years.
- Backups: 35 days.

Shorter retention. Enterprise customers can shorten GPS and POD retention to a minimum of 7 days under Settings > Data > Retention. Periods cannot be extended.

Tombstones. For every purge, Kestrel writes a tombstone record saying what was deleted, when and by which rule. Tombstones contain no customer data and can be exported for your own audits.

Deleting a whole tenant. A tenant admin can request deletion through support. The deletion can be cancelled within 72 hours, completes within 30 days, and the data leaves backups within another 35 days. Invoices are kept for tax reasons.

Legal hold. If data must be preserved for a dispute or investigation, our Legal team can place a legal hold on a tenant, which pauses all purges for it until the hold is removed."""),
("KB-0017", "Securing your Kestrel account", """\
Security is shared between Kestrel and our customers. We encrypt all data in transit and at rest, protect staff access with hardware security keys and audit every access to customer data. These are the steps we recommend on your side.

1. Use single sign-on. Enterprise tenants can require SAML SSO for all console users, keeping one break-glass admin account with a strong password and two-factor authentication.
2. Give people the smallest role they need. Console roles are Admin, Dispatcher, Warehouse and Viewer. Only admins can create API keys, change billing contacts or manage payment methods.
3. Rotate API keys every 90 days and whenever someone with access leaves. Rotation has a 24-hour overlap window, so it causes no downtime.
4. Store keys in a secrets manager, never in source code, container images or config files checked into version control. A surprising number of KF-E1201 tickets come from old servers with hardcoded keys.
5. Never paste secrets into tickets. If you paste an API key, password or access key by mistake, support will redact it, but you must rotate it immediately.
6. Verify webhook signatures on every request.
7. Review staff access. Enterprise admins can see every time a Kestrel employee viewed their data under Settings > Security > Staff access.
8. Keep DockLink and the driver app up to date; old versions miss security fixes.

Report suspected vulnerabilities to security@kestrel-freight.example.com."""),
("KB-0018", "Bulk operations with the batch endpoints", """\
For imports, migrations and mass updates, use the batch endpoints instead of one request per shipment. They are faster, use far less of your rate limit and are easier to retry.

Endpoints:
- POST /v2/shipments:batch creates up to 500 shipments per request.
- PATCH /v2/shipments:batch updates up to 500 shipments per request, for example to change delivery windows.
- POST /v2/shipments:batchCancel cancels up to 500 shipments.

Each batch request counts as one request against your rate limit. Importing 200,000 historical shipments therefore needs 400 requests, which takes a few minutes even on the Starter plan.

Partial failures. A batch is not all-or-nothing. The response lists the result for each item, with status ok or an error and a message. Retry only the failed items. Invalid values, such as a negative weight, produce HTTP 422 for the item with a validation message.

Idempotency. Send an Idempotency-Key header, for example a UUID, with each batch. If the connection drops and you resend the same batch with the same key within 24 hours, Kestrel returns the original result instead of creating duplicates.

Order references. By default, order references do not have to be unique, because some customers split one order into several shipments. If your orders map one-to-one to shipments, enable "Enforce unique order reference" under Settings > Shipments to make duplicates fail.

In the console, bulk edit is available for up to 1,000 selected shipments at a time."""),
("KB-0019", "Custom tracking domains", """\
By default, your customers see shipment tracking on track.kestrel-freight.example.com. Growth and Enterprise customers can show the tracking page on their own domain instead, for example tracking.yourcompany.example.org, with their logo and colours.

Setup:
1. In the console, go to Settings > Branding > Custom domain and enter the hostname.
2. In your DNS, create a CNAME record from that hostname to custom.kestrel-freight.example.com.
3. Kestrel detects the record, usually within 15 minutes, and issues a TLS certificate for your hostname automatically.
4. Upload your logo and choose colours; the preview shows how the page will look.

Certificates. Certificates are valid for 90 days and renew automatically 30 days before they expire. Renewal only works while the CNAME is in place. If your DNS provider, or a web agency working for you, removes or changes the record, renewal fails and your visitors eventually see a certificate warning. When the CNAME is missing at expiry time, Kestrel falls back to the default tracking URL in notification emails.

Troubleshooting:
- Check the record with a DNS lookup tool. It must be a CNAME, not an A record pointing to an IP address.
- Some DNS providers do not allow a CNAME at the root of a domain; use a subdomain such as tracking.
- After fixing DNS, renewal runs automatically within an hour. Support can trigger it manually."""),
("KB-0020", "Glossary of Kestrel terms", """\
This glossary explains terms used across the Kestrel console, documentation and support.

Tenant: one customer account, identified by a tenant ID such as tn_5120.
Shipment: one parcel or consignment tracked from pickup to delivery.
Consignment: a group of parcels shipped together under one tracking number.
Manifest: the list of shipments handed to a carrier in one pickup.
Carrier connector: the integration that imports one carrier's tracking events.
Sync cursor: the bookmark recording how far a connector has read.
Tracking event: a single status change, such as picked_up or delivered, with a unique event_id.
ETA: estimated time of arrival, recalculated with every GPS ping or carrier event.
Dwell time: the time a vehicle spends stopped at a location.
Geofence: a virtual boundary that triggers arrival and departure events.
Proof of delivery (POD): photo, signature, time and position captured at handover.
Dock: a loading bay or scanning station in a warehouse.
DockLink: the on-premises agent that connects warehouse scanners to Kestrel.
Heartbeat: the message DockLink sends every 30 seconds to show it is alive.
Scan buffer: DockLink's local store for up to 20,000 scans while offline.
Webhook: an HTTPS POST that Kestrel sends to your endpoint when something happens.
Dead-letter queue: where webhook events go after 8 failed delivery attempts.
Rate limit: the maximum requests per second per tenant (10, 50 or 200 by plan).
Credit note: a document that reduces or cancels an issued invoice.
Legal hold: a flag that stops all data purges for a tenant.
Tombstone: a record proving that data was deleted by a retention rule."""),
]


def write_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "article_id": [a[0] for a in KB_ARTICLES],
            "title": [a[1] for a in KB_ARTICLES],
            "text": [a[2] for a in KB_ARTICLES],
        }
    )
    pq.write_table(table, path, compression="snappy")


# ---------------------------------------------------------------------------
# Driver app quick-start guide as a hand-written PDF 1.4
# ---------------------------------------------------------------------------

PDF_PAGES: list[list[str]] = [
    [
        "#Kestrel Driver App - Quick-Start Guide",
        "Version 4.8.2 - for drivers using iOS 16+ or Android 11+",
        "",
        "#1. Before your first shift",
        "Install the Kestrel Driver app from the App Store or Google Play.",
        "Your fleet manager must add you as a driver with your mobile number.",
        "Allow location access set to Always, plus camera and notifications.",
        "",
        "#2. Logging in",
        "Open the app and enter your mobile phone number.",
        "Type the six-digit code you receive by SMS. It is valid for 10 minutes.",
        "Your first login registers the phone to you. You can have two devices.",
        "Your session lasts 12 hours, which covers a normal shift.",
        "",
        "#3. Starting your shift",
        "Tap Start shift. The app downloads your route and stop list.",
        "Check the vehicle and the number of parcels shown on the first screen.",
        "Scan every parcel when you load it. A green tick confirms the scan.",
        "GPS is recorded only between Start shift and End shift.",
        "",
        "#4. Driving the route",
        "Stops are shown in the order your dispatcher planned.",
        "Arrival is recorded automatically when you enter the stop's geofence.",
        "Customers see your live ETA on their tracking page.",
        "Do not use the phone while driving. Use the voice prompts instead.",
    ],
    [
        "#5. Delivering a parcel",
        "Scan the parcel barcode at the door.",
        "Take a clear photo of the parcel with the recipient or at the door.",
        "Ask the recipient to sign on the screen and type their name.",
        "If nobody is home, choose Left in safe place or Not delivered.",
        "The photo, signature, time and position form the proof of delivery.",
        "",
        "#6. Working without signal",
        "The app keeps working offline. Scans and deliveries are saved on the",
        "phone, up to 500 events, and uploaded when you have signal again.",
        "If the queue is full, drive to an area with coverage before continuing.",
        "",
        "#7. Ending your shift",
        "Return undelivered parcels to the depot and scan them back in.",
        "Tap End shift. Location tracking stops immediately.",
        "",
        "#8. Error messages",
        "KF-E1107: session expired or phone not registered. Log in again, or",
        "ask your fleet manager to remove your old phone from your profile.",
        "KF-E1108: too many wrong codes. Wait 15 minutes and try again.",
        "KF-E1110: app too old. Update to the latest version from the store.",
        "",
        "#9. Getting help",
        "Call your dispatcher first. For app problems, your fleet manager can",
        "contact Kestrel support at support@kestrel-freight.example.com.",
        "Kestrel Freight Cloud is a fictional company used for demonstration.",
    ],
]


def _pdf_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _page_stream(lines: list[str]) -> bytes:
    ops = ["BT", "/F1 11 Tf", "14 TL", "56 790 Td"]
    for line in lines:
        if line.startswith("#"):
            ops.append("/F2 13 Tf")
            ops.append(f"({_pdf_escape(line[1:])}) Tj T*")
            ops.append("/F1 11 Tf")
        elif line == "":
            ops.append("T*")
        else:
            ops.append(f"({_pdf_escape(line)}) Tj T*")
    ops.append("ET")
    return ("\n".join(ops) + "\n").encode("latin-1")


def build_pdf(pages: list[list[str]]) -> bytes:
    # Object numbers: 1 catalog, 2 pages, 3 font F1, 4 font F2, 5 info,
    # then per page: page object, content stream.
    objs: dict[int, bytes] = {}
    n_pages = len(pages)
    page_ids = [6 + 2 * i for i in range(n_pages)]
    objs[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objs[2] = f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode()
    objs[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    objs[4] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>"
    objs[5] = (b"<< /Title (Kestrel Driver App - Quick-Start Guide) /Author (Kestrel Freight Cloud) "
               b"/Producer (make_sample_binaries.py) /CreationDate (D:20260301000000Z) >>")
    for i, lines in enumerate(pages):
        pid = page_ids[i]
        stream = _page_stream(lines)
        objs[pid] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
                     f"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> "
                     f"/Contents {pid + 1} 0 R >>").encode()
        objs[pid + 1] = (f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"endstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for num in sorted(objs):
        offsets[num] = len(out)
        out += f"{num} 0 obj\n".encode() + objs[num] + b"\nendobj\n"
    xref_pos = len(out)
    size = max(objs) + 1
    out += f"xref\n0 {size}\n".encode()
    out += b"0000000000 65535 f \n"
    for num in range(1, size):
        out += f"{offsets[num]:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {size} /Root 1 0 R /Info 5 0 R >>\n"
            f"startxref\n{xref_pos}\n%%EOF\n").encode()
    return bytes(out)


# ---------------------------------------------------------------------------
# Deliberate junk files
# ---------------------------------------------------------------------------

LATIN1_TEXT = (
    "Notes from the Lyon depot visit\n"
    "Date: 3 March 2026. Present: Renée (site lead), José (IT), André (night shift).\n\n"
    "Dock 4 has been offline since Monday with error KF-E2001.\n"
    "José checked the network cable and restarted the DockLink PC in the café area.\n"
    "Problem solved after upgrading DockLink to v2.14.3.\n"
    "Next step: train the night shift on the « docklink doctor » check.\n"
    "Estimated cost: 120 EUR for the new cable, approved by Renée.\n"
)


def tiny_png() -> bytes:
    """An 8x8 RGB PNG: a small orange kestrel-coloured square."""
    width = height = 8

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + bytes((0xD9, 0x6B, 0x1E)) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def corrupt_pdf() -> bytes:
    """Starts like a PDF but the rest is deterministic pseudo-random garbage."""
    garbage = bytearray()
    seed = b"kestrel-corrupt-pdf"
    while len(garbage) < 2048:
        seed = hashlib.sha256(seed).digest()
        garbage += seed
    return b"%PDF-1.4\n" + bytes(garbage[:2048])


def binary_txt() -> bytes:
    return (b"DockLink scan buffer dump\n"
            b"\x00\x00\x00\x01\x00\x4e\x20\x00" + b"SCAN\x00" * 40
            + b"\x00\xff\xfe\x00 end of buffer\n")


def main() -> None:
    for sub in ("kb", "manuals", "junk"):
        (SAMPLE / sub).mkdir(parents=True, exist_ok=True)
    write_parquet(SAMPLE / "kb" / "articles.parquet")
    (SAMPLE / "manuals" / "driver-app-guide.pdf").write_bytes(build_pdf(PDF_PAGES))
    (SAMPLE / "junk" / "latin1-notes.txt").write_bytes(LATIN1_TEXT.encode("latin-1"))
    (SAMPLE / "junk" / "logo.png").write_bytes(tiny_png())
    (SAMPLE / "junk" / "corrupt.pdf").write_bytes(corrupt_pdf())
    (SAMPLE / "junk" / "binary.txt").write_bytes(binary_txt())
    print(f"wrote binary sample files under {SAMPLE}")


if __name__ == "__main__":
    main()
