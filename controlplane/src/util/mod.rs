//! Helpers every layer may use and that use nothing of Picket's: the clock and time formats,
//! addresses and networks, and the country of an address.

pub mod country;
pub mod net;
pub mod time;
