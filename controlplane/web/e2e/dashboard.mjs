// The dashboard in a real headless Chromium (Debian's, driven by playwright-core): log in,
// find the alert a real scan raised, open it, check its evidence, close it. Run by the Rust
// test tests/tests/dashboard_e2e.rs inside the lab's namespace:
//
//   node e2e/dashboard.mjs URL USER PASSWORD SCANNER TARGET SCREENSHOT_DIR WEBHOOK_URL
//
// Prints one JSON line ({"alert": ID, "status": ...}) and exits 0, or prints why and exits 1.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [url, user, password, scanner, target, shots, hook] = process.argv.slice(2);
if (!hook) {
  console.error("usage: dashboard.mjs URL USER PASSWORD SCANNER TARGET SCREENSHOT_DIR WEBHOOK_URL");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in a test namespace: no sandbox; and nothing that calls out of the machine.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const errors = [];
let step = "start";
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(15000);
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  // 401s are expected (the session check before login, the wrong password); anything else
  // the console reports as an error fails the test.
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 401/.test(m.text())) errors.push(`console: ${m.text()}`);
  });

  step = "login page";
  await page.goto(url);
  await page.getByLabel("User").fill(user);
  await page.getByLabel("Password").fill("not-the-password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("alert").filter({ hasText: "wrong user name or password" }).waitFor();
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();

  step = "overview";
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  await page.getByText("open alerts").waitFor();
  await page.locator("canvas").first().waitFor();
  await page.screenshot({ path: `${shots}/1-overview.png`, fullPage: true });

  step = "alerts list";
  await page.getByRole("link", { name: "Alerts", exact: true }).click();
  const row = page.locator("tr", { hasText: scanner }).filter({ hasText: "port_scan" });
  await row.first().waitFor();
  await page.screenshot({ path: `${shots}/2-alerts.png`, fullPage: true });
  const id = await row.first().getAttribute("data-alert");

  step = "alert detail";
  await row.first().getByRole("link", { name: "port_scan" }).click();
  await page.locator("h1 code.source", { hasText: scanner }).waitFor();
  // The scan's story comes first: the one port it found open, and its extent.
  await page.locator(".scan-story .open-found", { hasText: `${target}: 8080/tcp` }).waitFor();
  await page.locator(".scan-story .extent", { hasText: "201 distinct ports on 1 host" }).waitFor();
  await page.locator(".scan-story canvas[aria-label=\"The scan's extent at each update\"]").waitFor();
  await page.locator(".targets", { hasText: target }).waitFor();
  await page.locator(".observations").getByText("kernel_scan_event").first().waitFor();
  await page.locator("table.flows").waitFor();
  await page.screenshot({ path: `${shots}/3-alert.png`, fullPage: true });

  step = "comment and close";
  await page.getByLabel("Comment").fill("lab scanner, seen in the browser test");
  await page.getByRole("button", { name: "Comment" }).click();
  await page.locator(".timeline", { hasText: "lab scanner, seen in the browser test" }).waitFor();
  await page.getByRole("button", { name: "Close" }).click();
  await page.locator("dd.status", { hasText: "closed" }).waitFor();
  await page.getByRole("button", { name: "Reopen" }).waitFor();
  await page.screenshot({ path: `${shots}/4-closed.png`, fullPage: true });
  const status = await page.locator("dd.status").innerText();

  step = "entities";
  await page.getByRole("link", { name: "Entities", exact: true }).click();
  await page.locator("table.entities").getByText(target, { exact: true }).click();
  await page.locator("dd.role").waitFor();
  await page.locator(".how .how-c").nth(167).waitFor();
  await page.screenshot({ path: `${shots}/5-entity.png`, fullPage: true });
  const role = await page.locator("dd.role").innerText();

  step = "flows and sensors";
  await page.getByRole("link", { name: "Flows", exact: true }).click();
  await page.getByRole("heading", { name: "Flows", exact: true }).waitFor();
  await page.locator("table.flows").waitFor();
  // The AWS record the Rust test dropped into the watched directory (10.40.1.10, a custom
  // format without protocol, ports or counts): "-" where the log wrote nothing, never 0.
  await page.getByLabel("Source").selectOption("aws");
  const nat = page.locator("table.flows tr.flow", { hasText: "10.40.1.10" });
  await nat.waitFor();
  const cells = await nat.locator("td").allInnerTexts();
  const want = ["10.40.1.10:-", "203.0.113.5:-", "-", "- / -", "- / -"];
  if (JSON.stringify(cells.slice(3, 8)) !== JSON.stringify(want)) {
    throw new Error(`the NAT record shows ${JSON.stringify(cells)}, not ${JSON.stringify(want)}`);
  }
  // Its row opens to what the log did write: the instance, and where its time came from.
  await nat.click();
  const details = page.locator("tr.flow-details");
  await details.getByText("i-01234567890123456").waitFor();
  const shown = await details.innerText();
  if (!/time_from\s+delivery/.test(shown) || !/absent\s+\["protocol"/.test(shown)) {
    throw new Error(`the NAT record's details show ${JSON.stringify(shown)}`);
  }
  await page.screenshot({ path: `${shots}/6-flows-details.png`, fullPage: true });
  await page.getByLabel("Source").selectOption("");
  await page.screenshot({ path: `${shots}/6-flows.png`, fullPage: true });
  await page.getByRole("link", { name: "Sensors", exact: true }).click();
  await page.locator("table.sensors .health-ok").first().waitFor();
  await page.locator("table.sensors td.ifaces", { hasText: "XDP native" }).waitFor();
  const replica = await page.locator("table.sensors td.replica").first().innerText();
  await page.screenshot({ path: `${shots}/7-sensors.png`, fullPage: true });

  step = "settings";
  await page.getByRole("link", { name: "Settings", exact: true }).click();
  const form = page.getByRole("form", { name: "Add a notifier" });
  await form.getByLabel("Name").fill("browser-hook");
  await form.getByLabel("URL").fill(hook);
  await form.getByLabel("Secret (HMAC)").fill("browser-secret");
  await form.getByRole("button", { name: "Add notifier" }).click();
  const hookRow = page.locator("tr[data-notifier=browser-hook]");
  await hookRow.waitFor();
  await hookRow.getByRole("button", { name: "Test" }).click();
  await page.getByRole("status").filter({ hasText: "test message sent" }).waitFor();
  const allow = page.getByRole("form", { name: "Add to the allowlist" });
  await allow.getByLabel("Address or CIDR").fill("10.99.0.0/16");
  await allow.getByLabel("Alert type").fill("port_scan");
  await allow.getByLabel("Label").fill("sanctioned scanner");
  await allow.getByRole("button", { name: "Add" }).click();
  await page.getByText("10.99.0.0/16").waitFor();
  await page.screenshot({ path: `${shots}/8-settings.png`, fullPage: true });

  step = "logout";
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Log in" }).waitFor();

  if (errors.length) throw new Error(errors.join("\n"));
  console.log(JSON.stringify({ alert: Number(id), status, target_role: role, replica }));
} catch (e) {
  console.error(`dashboard test failed at "${step}": ${e.message}\n${errors.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
