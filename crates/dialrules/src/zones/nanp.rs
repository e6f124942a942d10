//! North American Numbering Plan (+1): area code → zones, grouped by state,
//! province or country.
//!
//! An area code that covers (or overlays) a place on another zone lists that
//! zone too: a lead whose only hint is the area code must be inside the
//! calling window wherever the code may ring. Canada's and the US's
//! non-geographic codes (8xx toll-free, 5xx personal, 600, 700, 900 ...) are
//! left out on purpose, so they fall back to [`UNKNOWN`].

use chrono_tz::{America, Atlantic, Pacific, Tz};

use super::Group;

/// Zones for an area code not in [`AREAS`]: every zone of the US and Canadian
/// mainland, Alaska included (Hawaii and the territories have their own codes).
pub(super) const UNKNOWN: &[Tz] = &[
    America::St_Johns,
    America::Halifax,
    America::New_York,
    America::Chicago,
    America::Regina,
    America::Denver,
    America::Phoenix,
    America::Los_Angeles,
    America::Anchorage,
];

const EAST: &[Tz] = &[America::New_York];
const CENTRAL: &[Tz] = &[America::Chicago];
const MOUNTAIN: &[Tz] = &[America::Denver];
const PACIFIC: &[Tz] = &[America::Los_Angeles];
const CENTRAL_MOUNTAIN: &[Tz] = &[America::Chicago, America::Denver];
const EAST_CENTRAL: &[Tz] = &[America::New_York, America::Chicago];

/// Area codes (the three digits after +1) in service or assigned, with the
/// zones of the places they cover.
pub(super) const AREAS: &[Group<u16>] = &[
    // United States
    Group::new("US-AL", CENTRAL, &[205, 251, 256, 334, 483, 659, 938]),
    Group::new("US-AK", &[America::Anchorage, America::Adak], &[907]),
    Group::new("US-AZ", &[America::Phoenix], &[480, 520, 602, 623]),
    // The Navajo Nation, in 928, keeps daylight saving time.
    Group::new("US-AZ north", &[America::Phoenix, America::Denver], &[928]),
    Group::new("US-AR", CENTRAL, &[327, 479, 501, 870]),
    Group::new(
        "US-CA",
        PACIFIC,
        &[
            209, 213, 279, 310, 323, 341, 350, 357, 369, 408, 415, 424, 442, 510, 530, 559, 562,
            619, 626, 628, 650, 657, 661, 669, 707, 714, 738, 747, 760, 805, 818, 820, 831, 840,
            858, 909, 916, 925, 949, 951,
        ],
    ),
    Group::new("US-CO", MOUNTAIN, &[303, 719, 720, 970, 983]),
    Group::new("US-CT", EAST, &[203, 475, 860, 959]),
    Group::new("US-DE", EAST, &[302]),
    Group::new("US-DC", EAST, &[202, 771]),
    Group::new(
        "US-FL",
        EAST,
        &[
            239, 305, 321, 324, 352, 386, 407, 561, 645, 656, 689, 727, 728, 754, 772, 786, 813,
            863, 904, 941, 954,
        ],
    ),
    // The panhandle west of the Apalachicola river is on Central time.
    Group::new("US-FL panhandle", EAST_CENTRAL, &[448, 850]),
    Group::new(
        "US-GA",
        EAST,
        &[229, 404, 470, 478, 678, 706, 762, 770, 912, 943],
    ),
    Group::new("US-HI", &[Pacific::Honolulu], &[808]),
    // The panhandle north of the Salmon river is on Pacific time.
    Group::new(
        "US-ID",
        &[America::Boise, America::Los_Angeles],
        &[208, 986],
    ),
    Group::new(
        "US-IL",
        CENTRAL,
        &[
            217, 224, 309, 312, 331, 447, 464, 618, 630, 708, 730, 773, 779, 815, 847, 861, 872,
        ],
    ),
    Group::new(
        "US-IN",
        &[America::Indiana::Indianapolis],
        &[260, 317, 463, 765],
    ),
    // Gary, Evansville and a few north-western and south-western counties
    // are on Central time.
    Group::new(
        "US-IN west",
        &[America::Indiana::Indianapolis, America::Chicago],
        &[219, 574, 812, 930],
    ),
    Group::new("US-IA", CENTRAL, &[319, 515, 563, 641, 712]),
    Group::new("US-KS", CENTRAL, &[316, 913]),
    // Four western counties are on Mountain time.
    Group::new("US-KS west", CENTRAL_MOUNTAIN, &[620, 785]),
    Group::new("US-KY", &[America::Kentucky::Louisville], &[502, 606, 859]),
    Group::new(
        "US-KY west",
        &[America::Kentucky::Louisville, America::Chicago],
        &[270, 364],
    ),
    Group::new("US-LA", CENTRAL, &[225, 318, 337, 504, 985]),
    Group::new("US-ME", EAST, &[207]),
    Group::new("US-MD", EAST, &[227, 240, 301, 410, 443, 667]),
    Group::new(
        "US-MA",
        EAST,
        &[339, 351, 413, 508, 617, 774, 781, 857, 978],
    ),
    Group::new(
        "US-MI",
        &[America::Detroit],
        &[231, 248, 269, 313, 517, 586, 616, 679, 734, 810, 947, 989],
    ),
    // Four Upper Peninsula counties on the Wisconsin line are on Central time.
    Group::new(
        "US-MI upper",
        &[America::Detroit, America::Menominee],
        &[906],
    ),
    Group::new("US-MN", CENTRAL, &[218, 320, 507, 612, 651, 763, 924, 952]),
    Group::new("US-MS", CENTRAL, &[228, 601, 662, 769]),
    Group::new(
        "US-MO",
        CENTRAL,
        &[235, 314, 417, 557, 573, 636, 660, 816, 975],
    ),
    Group::new("US-MT", MOUNTAIN, &[406]),
    Group::new("US-NE", CENTRAL, &[402, 531]),
    Group::new("US-NE west", CENTRAL_MOUNTAIN, &[308]),
    Group::new("US-NV", PACIFIC, &[702, 725]),
    // West Wendover is on Mountain time.
    Group::new(
        "US-NV north",
        &[America::Los_Angeles, America::Denver],
        &[775],
    ),
    Group::new("US-NH", EAST, &[603]),
    Group::new(
        "US-NJ",
        EAST,
        &[201, 551, 609, 640, 732, 848, 856, 862, 908, 973],
    ),
    Group::new("US-NM", MOUNTAIN, &[505, 575]),
    Group::new(
        "US-NY",
        EAST,
        &[
            212, 315, 329, 332, 347, 363, 516, 518, 585, 607, 624, 631, 646, 680, 716, 718, 838,
            845, 914, 917, 929, 934,
        ],
    ),
    Group::new(
        "US-NC",
        EAST,
        &[252, 336, 472, 704, 743, 828, 910, 919, 980, 984],
    ),
    Group::new("US-ND", CENTRAL_MOUNTAIN, &[701]),
    Group::new(
        "US-OH",
        EAST,
        &[
            216, 220, 234, 283, 326, 330, 380, 419, 436, 440, 513, 567, 614, 740, 937,
        ],
    ),
    Group::new("US-OK", CENTRAL, &[405, 539, 572, 580, 918]),
    Group::new("US-OR", PACIFIC, &[503, 971]),
    // Malheur County is on Mountain time.
    Group::new(
        "US-OR east",
        &[America::Los_Angeles, America::Boise],
        &[458, 541],
    ),
    Group::new(
        "US-PA",
        EAST,
        &[
            215, 223, 267, 272, 412, 445, 484, 570, 582, 610, 717, 724, 814, 835, 878,
        ],
    ),
    Group::new("US-RI", EAST, &[401]),
    Group::new("US-SC", EAST, &[803, 821, 839, 843, 854, 864]),
    Group::new("US-SD", CENTRAL_MOUNTAIN, &[605]),
    Group::new("US-TN", CENTRAL, &[615, 629, 731, 901]),
    Group::new("US-TN east", EAST, &[865]),
    // East Tennessee's Central-time counties share these codes.
    Group::new("US-TN split", EAST_CENTRAL, &[423, 931]),
    Group::new(
        "US-TX",
        CENTRAL,
        &[
            210, 214, 254, 281, 325, 346, 361, 409, 430, 469, 512, 682, 713, 726, 737, 806, 817,
            830, 832, 903, 936, 940, 945, 956, 972, 979,
        ],
    ),
    // El Paso and Hudspeth County are on Mountain time; 432 reaches Culberson.
    Group::new("US-TX west", MOUNTAIN, &[915]),
    Group::new("US-TX far west", CENTRAL_MOUNTAIN, &[432]),
    Group::new("US-UT", MOUNTAIN, &[385, 435, 801]),
    Group::new("US-VT", EAST, &[802]),
    Group::new(
        "US-VA",
        EAST,
        &[276, 434, 540, 571, 686, 703, 757, 804, 826, 948],
    ),
    Group::new("US-WA", PACIFIC, &[206, 253, 360, 425, 509, 564]),
    Group::new("US-WV", EAST, &[304, 681]),
    Group::new("US-WI", CENTRAL, &[262, 274, 353, 414, 534, 608, 715, 920]),
    Group::new("US-WY", MOUNTAIN, &[307]),
    // US territories
    Group::new("US-PR", &[America::Puerto_Rico], &[787, 939]),
    Group::new("US-VI", &[America::St_Thomas], &[340]),
    Group::new("US-GU", &[Pacific::Guam], &[671]),
    Group::new("US-MP", &[Pacific::Saipan], &[670]),
    Group::new("US-AS", &[Pacific::Pago_Pago], &[684]),
    // Canada
    Group::new("CA-AB", &[America::Edmonton], &[368, 403, 587, 780, 825]),
    Group::new("CA-BC Lower Mainland", &[America::Vancouver], &[604]),
    // The East Kootenays keep Mountain time and the Peace River region
    // Mountain standard time all year.
    Group::new(
        "CA-BC",
        &[America::Vancouver, America::Edmonton, America::Dawson_Creek],
        &[236, 250, 257, 672, 778],
    ),
    Group::new("CA-MB", &[America::Winnipeg], &[204, 431, 584]),
    Group::new("CA-NB", &[America::Moncton], &[428, 506]),
    // Labrador is mostly on Atlantic time.
    Group::new(
        "CA-NL",
        &[America::St_Johns, America::Goose_Bay],
        &[709, 879],
    ),
    Group::new("CA-NS PE", &[America::Halifax], &[782, 902]),
    Group::new(
        "CA-ON",
        &[America::Toronto],
        &[
            226, 249, 289, 343, 365, 382, 416, 437, 519, 548, 613, 647, 683, 705, 742, 753, 905,
            942,
        ],
    ),
    // West of 90°W (Kenora, Dryden) is on Central time.
    Group::new(
        "CA-ON northwest",
        &[America::Toronto, America::Winnipeg],
        &[807],
    ),
    Group::new(
        "CA-QC",
        &[America::Toronto],
        &[263, 354, 438, 450, 468, 514, 579, 819, 873],
    ),
    // The Magdalen Islands and the Lower North Shore are on Atlantic time.
    Group::new(
        "CA-QC east",
        &[America::Toronto, America::Halifax],
        &[367, 418, 581],
    ),
    // Lloydminster keeps Alberta's time.
    Group::new(
        "CA-SK",
        &[America::Regina, America::Edmonton],
        &[306, 474, 639],
    ),
    Group::new(
        "CA-YT NT NU",
        &[
            America::Whitehorse,
            America::Edmonton,
            America::Winnipeg,
            America::Toronto,
        ],
        &[867],
    ),
    // Other NANP countries and territories
    Group::new("AG", &[America::Antigua], &[268]),
    Group::new("AI", &[America::Anguilla], &[264]),
    Group::new("BB", &[America::Barbados], &[246]),
    Group::new("BM", &[Atlantic::Bermuda], &[441]),
    Group::new("BS", &[America::Nassau], &[242]),
    Group::new("DM", &[America::Dominica], &[767]),
    Group::new("DO", &[America::Santo_Domingo], &[809, 829, 849]),
    Group::new("GD", &[America::Grenada], &[473]),
    Group::new("JM", &[America::Jamaica], &[658, 876]),
    Group::new("KN", &[America::St_Kitts], &[869]),
    Group::new("KY", &[America::Cayman], &[345]),
    Group::new("LC", &[America::St_Lucia], &[758]),
    Group::new("MS", &[America::Montserrat], &[664]),
    Group::new("SX", &[America::Lower_Princes], &[721]),
    Group::new("TC", &[America::Grand_Turk], &[649]),
    Group::new("TT", &[America::Port_of_Spain], &[868]),
    Group::new("VC", &[America::St_Vincent], &[784]),
    Group::new("VG", &[America::Tortola], &[284]),
];
