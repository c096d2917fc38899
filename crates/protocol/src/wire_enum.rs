//! `wire_enum!`: a fieldless enum with an explicit integer value per variant,
//! and the conversions to and from that value.

/// Defines a `#[repr(int)]` enum with `to_wire`, `from_wire` and a
/// crate-private `decode` that reports an unknown value as
/// [`PayloadError::UnknownValue`](crate::PayloadError::UnknownValue).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $repr:ident, field = $field:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every variant, in wire-value order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The value of this variant on the wire.
            pub const fn to_wire(self) -> $repr {
                self as $repr
            }

            /// The variant with this wire value, or `None` if this protocol
            /// version does not define it.
            pub const fn from_wire(value: $repr) -> Option<Self> {
                match value {
                    $( $value => Some(Self::$variant), )+
                    _ => None,
                }
            }

            #[allow(dead_code, reason = "not every wire enum is decoded from a payload field")]
            pub(crate) fn decode(value: $repr) -> Result<Self, $crate::PayloadError> {
                Self::from_wire(value).ok_or($crate::PayloadError::UnknownValue {
                    field: $field,
                    value: value as u32,
                })
            }
        }
    };
}

pub(crate) use wire_enum;
