//! The country of an address, found on this machine: a MaxMind database the user gives first,
//! then the registries' assignment data built into Picket (the `iptocc` crate). No lookup leaves
//! the machine.

use std::net::IpAddr;

/// The user's MaxMind database, once `use_country_db` opened it.
static COUNTRY_DB: std::sync::OnceLock<maxminddb::Reader<Vec<u8>>> = std::sync::OnceLock::new();

/// Opens a MaxMind DB (GeoIP2/GeoLite2 Country or City, or any database whose records carry
/// `country.iso_code`) as the first source of countries for the whole process; addresses it
/// does not cover fall back to the embedded registry data. Returns its type and build time.
pub fn use_country_db(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let reader = maxminddb::Reader::open_readfile(path).with_context(|| {
        format!(
            "{}: not a readable MaxMind DB (a GeoIP2 or GeoLite2 Country or City .mmdb file)",
            path.display()
        )
    })?;
    let m = reader.metadata();
    let about = format!(
        "{} (IPv{}, built {}, {} nodes)",
        m.database_type,
        m.ip_version,
        super::time::rfc3339(m.build_epoch as i64 * 1_000_000_000),
        m.node_count
    );
    COUNTRY_DB
        .set(reader)
        .map_err(|_| anyhow::anyhow!("a country database is already in use"))?;
    Ok(about)
}

/// The country (ISO 3166 alpha-2) of `ip`: the user's MaxMind database first (its country, else
/// its registered country), then the registries' data embedded by `iptocc`.
pub fn country_code(ip: IpAddr) -> Option<&'static str> {
    if let Some(db) = COUNTRY_DB.get()
        && let Ok(found) = db.lookup(ip)
        && let Ok(Some(c)) = found.decode::<maxminddb::geoip2::Country<'static>>()
        && let Some(cc) = c.country.iso_code.or(c.registered_country.iso_code)
    {
        return Some(cc);
    }
    iptocc::country_code(ip)
}
